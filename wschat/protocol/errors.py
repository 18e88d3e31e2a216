"""Errors of the sans-IO protocol layer, split by blame (as h11 and wsproto do)."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error the protocol layer raises."""


class LocalProtocolError(ProtocolError):
    """The caller misused the API (a bug in the code driving the connection).

    The peer never causes this: bad peer input becomes an HTTP error response
    or a WebSocket close, never an exception.
    """
