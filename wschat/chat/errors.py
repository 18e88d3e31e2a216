"""Errors of the chat layer."""

from __future__ import annotations


class ChatError(Exception):
    """Bad input from a client that does not end the connection.

    The client receives ``{"type": "error", "code": code, "reason": reason}``.

    Attributes:
        code: A stable, machine-readable error code (see the README's table).
        reason: A human-readable explanation.
        id: The ``id`` of the message refused, when it had one.
    """

    def __init__(self, code: str, reason: str, id: str | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.id = id
