"""The connection state machine, as data: one enum and one transition table.

Both sides share it (h11 ``_state.py`` style: everything that affects the state
machine lives here). The server walks ``HTTP -> UPGRADE_PENDING -> OPEN``, the
client ``CONNECTING -> OPEN``; from ``OPEN`` both close the same way.
"""

from __future__ import annotations

import enum
from typing import Final

from .errors import LocalProtocolError


class State(enum.Enum):
    """Where a connection is in its life."""

    #: Client: the handshake request is sent; waiting for the server's answer.
    CONNECTING = "connecting"
    #: Server: reading HTTP requests (keep-alive between them).
    HTTP = "http"
    #: Server: a valid upgrade request waits for ``accept_websocket`` or a rejection.
    UPGRADE_PENDING = "upgrade-pending"
    #: WebSocket open: messages flow both ways.
    OPEN = "open"
    #: We sent a close frame and wait for the peer's.
    CLOSING = "closing"
    #: Done: the I/O layer should close TCP once ``data_to_send`` is flushed.
    CLOSED = "closed"


# Every transition a connection makes, in one place.
TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    State.CONNECTING: frozenset({State.OPEN, State.CLOSED}),
    State.HTTP: frozenset({State.UPGRADE_PENDING, State.CLOSED}),
    State.UPGRADE_PENDING: frozenset({State.OPEN, State.HTTP, State.CLOSED}),
    State.OPEN: frozenset({State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


def check_transition(old: State, new: State) -> None:
    """Raise LocalProtocolError unless ``old -> new`` is in :data:`TRANSITIONS`."""
    if new is not old and new not in TRANSITIONS[old]:
        raise LocalProtocolError(f"no transition from {old.value} to {new.value}")
