"""Chat dispatch: what a chat client's text message makes the server do.

The chat rules themselves are pure (:class:`~wschat.chat.ChatSession`); this
module applies the per-connection rate limit, carries the command out on the
Hub and answers the sender (``ack``, ``error``). A Hub call that fails for a
reason other than an unavailable backend is a bug: it costs this connection
(closed with 1011) and is logged once, never the server.
"""

from __future__ import annotations

import logging

import anyio

from ..chat import ChatError, Join, Leave, Say, ack_event, error_event, peek_message_id
from ..hub import BackendUnavailable, Hub
from .config import ServerConfig
from .metrics import Metrics
from .peer import Peer
from .ratelimit import KeyedRateLimiter

logger = logging.getLogger("wschat.server")


class ChatDispatch:
    """Carries out chat clients' commands.

    Args:
        hub: This node's Hub.
        config: The server settings (rate limits).
        metrics: The server's metrics.
    """

    def __init__(self, hub: Hub, config: ServerConfig, metrics: Metrics) -> None:
        self.hub = hub
        self.config = config
        self.metrics = metrics
        self._addresses = KeyedRateLimiter(
            config.address_rate, config.address_burst, config.address_table_size
        )

    async def on_text(self, peer: Peer, text: str) -> None:
        """Handle one text message from a chat client."""
        session = peer.session
        assert session is not None
        now = anyio.current_time()
        if not peer.bucket.take(now):
            self._rate_limited(peer, text, now)
            return
        if not self._addresses.take(peer.client_key, now):
            # Maybe a neighbour behind the same NAT: refused, but no strike.
            self.metrics.address_rate_limited.inc()
            reason = f"over {self.config.address_rate:g} messages/s from your address: dropped"
            peer.send_event(error_event("rate_limited", reason, peek_message_id(text)))
            return
        had_username = session.username is not None
        rooms_before = set(session.rooms)
        try:
            command = session.handle(text)
        except ChatError as exc:
            peer.send_event(error_event(exc.code, exc.reason, exc.id))
            return
        message_id = command.id if isinstance(command, Say) else None
        try:
            if not had_username and session.username is not None:
                await self.hub.update_presence(peer)
            if isinstance(command, Say):
                assert command.room is not None and command.username is not None
                position = await self.hub.say(
                    command.room, command.username, command.message, message_id
                )
                if message_id is not None:
                    peer.send_event(ack_event(command.room, position, message_id))
            elif isinstance(command, Join):
                await self.hub.join(peer, command.room, command.since)
            elif isinstance(command, Leave):
                await self.hub.leave(peer, command.room)
        except BackendUnavailable as exc:
            if isinstance(command, Join) and command.room not in rooms_before:
                session.rooms.discard(command.room)  # the join did not happen
            reason = f"not done, try again: {exc}"
            peer.send_event(error_event("unavailable", reason, message_id))
        except Exception:
            logger.exception("! conn %s: %s failed", peer.conn_id, type(command).__name__)
            peer.close(1011, "internal error")

    def _rate_limited(self, peer: Peer, text: str, now: float) -> None:
        self.metrics.rate_limited.inc()
        if not peer.strikes.take(now):
            peer.close(1008, "rate limit exceeded repeatedly")
            return
        reason = f"over {self.config.rate:g} messages/s (burst {self.config.burst}): dropped"
        peer.send_event(error_event("rate_limited", reason, peek_message_id(text)))
