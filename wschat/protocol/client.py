"""The client side of one WebSocket connection, from the handshake request to the last frame.

Theory of operation
-------------------
A :class:`ClientConnection` is sans-IO and mirrors
:class:`~wschat.protocol.connection.ServerConnection`: the I/O layer sends what
:meth:`~ClientConnection.data_to_send` returns (the first call gives the
handshake request), feeds what it reads to
:meth:`~ClientConnection.receive_data` (and
:meth:`~ClientConnection.receive_eof`), and takes events from
:meth:`~ClientConnection.events_received`. Bad input from the server never
raises: a bad handshake answer becomes :class:`~.events.HandshakeRejected`,
a bad frame a close.

h11's client side writes the request and parses the answer. A 101 is checked
as RFC 6455 4.1 says (``Upgrade``/``Connection`` tokens, the
``Sec-WebSocket-Accept`` for the key sent, only extensions we offered) and
becomes :class:`~.events.HandshakeAccepted`; any other answer, read to its
end, becomes :class:`~.events.HandshakeRejected` with its status and body.
After a 101 the bytes h11 read past it are handed to wsproto's client side,
and :class:`~.websocket.WebSocketConnection` (shared with the server) runs
the WebSocket phase: masking, reassembly, pings, closes and the size cap.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable

import h11
from wsproto import ConnectionType
from wsproto.handshake import client_extensions_handshake
from wsproto.utilities import RemoteProtocolError

from .deflate import CappedPerMessageDeflate
from .errors import LocalProtocolError
from .events import HandshakeAccepted, HandshakeRejected, Headers
from .handshake import check_websocket_response, decode_headers, offered_extensions
from .state import State
from .websocket import DEFAULT_MAX_MESSAGE_SIZE, WebSocketConnection

# Cap on the response head (status line + headers), as on the server side:
# h11's own default is 16 KiB; websockets allows 128 lines of 8 KiB.
DEFAULT_MAX_RESPONSE_HEAD = 16 * 1024

# Cap on the body of a refusal kept for HandshakeRejected: wschat's own refusals
# are one line. Precedent: websockets keeps at most 1 MiB (WEBSOCKETS_MAX_BODY_SIZE);
# a chat client needs the reason, not a page.
DEFAULT_MAX_REJECTION_BODY = 64 * 1024

KEY_BYTES = 16  # RFC 6455 4.1: "a randomly selected 16-byte value"


class ClientConnection(WebSocketConnection):
    """Sans-IO client side of one WebSocket connection.

    The handshake request is queued at construction: send
    ``data_to_send()`` first. ``state`` is ``CONNECTING`` until the answer,
    then ``OPEN`` (after :class:`~.events.HandshakeAccepted`) or ``CLOSED``
    (after :class:`~.events.HandshakeRejected`).

    Args:
        host: The ``Host`` header, e.g. ``"127.0.0.1:8080"``.
        target: The request target, e.g. ``"/ws?room=lobby"``.
        origin: An ``Origin`` header to send (browsers always do), or None.
        extra_headers: More request headers as ``(name, value)`` pairs
            (e.g. a cookie or ``authorization``).
        max_message_size: Cap on a reassembled, decompressed incoming
            message; over it the connection fails with 1009.
        compression: Offer permessage-deflate.
        key: The 16 raw bytes behind ``Sec-WebSocket-Key``; random when None
            (inject them to make a test deterministic).

    Raises:
        LocalProtocolError: ``key`` is not 16 bytes, or a header cannot be
            sent (e.g. it contains a line break).
    """

    def __init__(
        self,
        host: str,
        target: str = "/",
        origin: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        compression: bool = False,
        key: bytes | None = None,
    ) -> None:
        super().__init__(State.CONNECTING)
        if key is None:
            key = secrets.token_bytes(KEY_BYTES)
        if len(key) != KEY_BYTES:
            raise LocalProtocolError(f"the handshake key must be {KEY_BYTES} bytes, not {len(key)}")
        self.key = base64.b64encode(key).decode("ascii")
        """The ``Sec-WebSocket-Key`` sent."""
        self.max_message_size = max_message_size
        self._deflate = CappedPerMessageDeflate(max_message_size) if compression else None
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=DEFAULT_MAX_RESPONSE_HEAD)
        self._response: h11.Response | None = None
        self._body = bytearray()
        self._eof = False
        headers = [
            ("host", host),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", self.key),
            ("sec-websocket-version", "13"),
        ]
        if origin is not None:
            headers.append(("origin", origin))
        if self._deflate is not None:
            params = self._deflate.offer()
            offer = self._deflate.name if params is True else f"{self._deflate.name}; {params}"
            headers.append(("sec-websocket-extensions", offer))
        headers.extend(extra_headers)
        try:
            request = self._h11.send(h11.Request(method="GET", target=target, headers=headers))
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"cannot send this handshake request: {exc}") from None
        end = self._h11.send(h11.EndOfMessage())  # b"": a GET has no body
        self._out.extend(data for data in (request, end) if data)

    # -- inputs ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the server. Never raises on bad input."""
        if not data:
            self.receive_eof()
        elif self._state is State.CONNECTING:
            self._h11.receive_data(data)
            self._process_handshake()
        elif self._state in (State.OPEN, State.CLOSING):
            self._receive_frames(data)

    def receive_eof(self) -> None:
        """The server closed its side of TCP."""
        if self._state is State.CONNECTING:
            # A refusal without Content-Length ends at EOF: h11 finishes it here.
            self._eof = True
            self._h11.receive_data(b"")
            self._process_handshake()
        elif self._state in (State.OPEN, State.CLOSING):
            self._receive_websocket_eof()

    # -- the handshake answer --------------------------------------------------

    def _process_handshake(self) -> None:
        while self._state is State.CONNECTING:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._eof:
                    self._reject("connection closed before the handshake response ended")
                else:
                    self._reject(f"malformed HTTP response: {exc}")
                return
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self._on_switching_protocols(event)
                # Any other 1xx (e.g. 100 Continue) is interim: RFC 9110 15.2.
            elif isinstance(event, h11.Response):
                self._response = event
            elif isinstance(event, h11.Data):
                room = DEFAULT_MAX_REJECTION_BODY - len(self._body)
                self._body += event.data[:room]
                if len(event.data) > room:
                    self._reject_response("(body truncated)")
            elif isinstance(event, h11.EndOfMessage):
                self._reject_response()
            else:  # NEED_DATA (PAUSED only follows a 101, handled above)
                return

    def _on_switching_protocols(self, response: h11.InformationalResponse) -> None:
        headers = decode_headers(response.headers)
        problem = check_websocket_response(headers, self.key)
        names: tuple[str, ...] = ()
        deflate: CappedPerMessageDeflate | None = None
        if problem is None:
            accepted = offered_extensions(headers)
            try:
                # Raises for an extension we did not offer (RFC 6455 4.1 step 5).
                in_use = client_extensions_handshake(
                    accepted, [self._deflate] if self._deflate is not None else []
                )
            except RemoteProtocolError as exc:
                problem = f"101 response with an extension that was not offered: {exc}"
            except ValueError as exc:  # e.g. server_max_window_bits=abc
                problem = f"101 response with invalid extension parameters: {exc}"
            else:
                names = tuple(extension.name for extension in in_use)
                deflate = self._deflate if in_use else None
                if len(names) > 1:
                    # RFC 7692 5: a server MUST NOT accept more than one offer.
                    problem = "101 response accepts permessage-deflate more than once"
        if problem is not None:
            self._reject(problem, response.status_code, headers)
            return
        self._events.append(HandshakeAccepted(headers, names))
        trailing, _ = self._h11.trailing_data
        self._open_websocket(
            ConnectionType.CLIENT, deflate, self.max_message_size, True, bytes(trailing)
        )

    def _reject_response(self, note: str = "") -> None:
        assert self._response is not None
        status, text = self._response.status_code, self._response.reason.decode("latin-1")
        reason = f"HTTP {status} {text}".strip()
        self._reject(f"{reason} {note}" if note else reason)

    def _reject(
        self, reason: str, status: int | None = None, headers: Headers | None = None
    ) -> None:
        """End with HandshakeRejected; status and headers default to the response read."""
        if status is None:
            status = self._response.status_code if self._response is not None else 0
        if headers is None:
            headers = decode_headers(self._response.headers) if self._response else ()
        self._events.append(HandshakeRejected(status, headers, bytes(self._body), reason))
        self._body = bytearray()
        self._set_state(State.CLOSED)
