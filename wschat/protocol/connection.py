"""The server side of one TCP connection, from the first HTTP byte to the last frame.

Theory of operation
-------------------
A :class:`ServerConnection` is sans-IO: the I/O layer feeds it bytes with
:meth:`~ServerConnection.receive_data` (and :meth:`~ServerConnection.receive_eof`),
then takes events from :meth:`~ServerConnection.events_received` and bytes from
:meth:`~ServerConnection.data_to_send`. It never raises on bad peer input:
an HTTP error becomes a response, a WebSocket error a close frame.

The connection starts in HTTP: h11 parses requests. Every request's ``Host``
must pass the :class:`~.handshake.HostPolicy` (else 421, DNS-rebinding
protection). A request for a WebSocket
path is validated (:mod:`.handshake`) and, if valid, surfaces as a
:class:`~.events.WebSocketRequest` that the caller accepts or rejects; other
requests surface as :class:`~.events.HttpRequest` for the caller to answer.
Keep-alive and pipelining work for plain HTTP, with bounded buffering (see
:class:`ServerConnection`). After ``accept_websocket`` sends the 101, the bytes
h11 read past the request (often the first frame) are handed to wsproto.

From there on :class:`~.websocket.WebSocketConnection`, the base shared with
the client side, runs the WebSocket phase: it answers pings, echoes closes,
reassembles fragmented messages and enforces the size cap (1003, 1007, 1009).
permessage-deflate is negotiated only when ``accept_websocket`` is given a
:class:`~.deflate.DeflatePolicy`; then :attr:`ServerConnection.deflater` is the
compressor this connection shares with every other of the same setting.
"""

from __future__ import annotations

import h11
from wsproto import ConnectionType

from .deflate import DeflatePolicy, MessageDeflater, ServerPerMessageDeflate
from .errors import LocalProtocolError
from .events import (
    Headers,
    HttpRequest,
    RequestRejected,
    WebSocketRequest,
)
from .handshake import (
    HostPolicy,
    OriginPolicy,
    accept_token,
    check_websocket_request,
    decode_headers,
    header_value,
    offered_extensions,
    tries_to_upgrade,
)
from .http import (
    DEFAULT_MAX_PENDING_OUTPUT,
    DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_MAX_REQUEST_HEAD,
    SECURITY_HEADERS,
    SERVER_HEADER,
    STATUS_TEXT,
)
from .state import State
from .websocket import DEFAULT_MAX_MESSAGE_SIZE, WebSocketConnection


class ServerConnection(WebSocketConnection):
    """Sans-IO server side of one TCP connection (HTTP, then maybe WebSocket).

    The HTTP phase: requests come out one at a time. Each
    :class:`~.events.HttpRequest` must be answered (``send_response``) before
    the next one is parsed, and a pipelined request waits while more than
    ``max_pending_output`` response bytes sit in ``data_to_send()``: taking
    them resumes parsing, which may queue the next events. A client that
    pipelines thousands of requests and never reads therefore costs at most
    about ``max_pending_output`` plus one response. The I/O layer's loop:

    1. ``receive_data(data)``;
    2. answer each event of ``events_received()``, and call it again until it
       returns none (answering a request may parse the next one);
    3. send what ``data_to_send()`` returns. Taking the bytes may parse more
       pipelined requests: if ``events_received()`` now returns events, go
       back to 2 with them;
    4. otherwise read again (1), or close TCP when ``close_expected()``.

    Args:
        websocket_paths: Paths that accept WebSocket upgrades (e.g. ``{"/ws"}``).
        origin_policy: Which browser origins may open a WebSocket.
        max_request_head: Cap on request line + headers; over it: 431.
        host_policy: Which ``Host`` values are answered, on every path; others
            get 421 ``host not allowed: ...``. Default: ``localhost``,
            ``127.0.0.1`` and ``[::1]`` only (see ``HostPolicy.for_bind``).
        max_pending_output: Response bytes waiting in ``data_to_send()`` over
            which pipelined requests are not parsed.
        max_request_body: Cap on a request body; over it: 413, and the
            connection closes (the rest is not read).
    """

    def __init__(
        self,
        websocket_paths: frozenset[str] | set[str] = frozenset({"/ws"}),
        origin_policy: OriginPolicy | None = None,
        max_request_head: int = DEFAULT_MAX_REQUEST_HEAD,
        host_policy: HostPolicy | None = None,
        max_pending_output: int = DEFAULT_MAX_PENDING_OUTPUT,
        max_request_body: int = DEFAULT_MAX_REQUEST_BODY,
    ) -> None:
        super().__init__(State.HTTP)
        self.websocket_paths = frozenset(websocket_paths)
        self.origin_policy = origin_policy or OriginPolicy()
        self.host_policy = host_policy or HostPolicy()
        self.max_request_head = max_request_head
        self.max_pending_output = max_pending_output
        self.max_request_body = max_request_body
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_request_head)
        self._reading: tuple[str, str, str, Headers] | None = None  # a request, body to come
        self._body: list[bytes] = []
        self._body_size = 0
        self._pending_request: tuple[str, str, Headers] | None = None
        self._awaiting_response = False
        self._answered_with_error = False
        self._request_method = b""  # of the request being answered
        self.deflater: MessageDeflater | None = None
        """The shared compressor of the negotiated permessage-deflate (None: no
        extension): a broadcast's frame for this connection is ``deflater.frame(payload)``."""

    # -- inputs --------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer. Never raises on bad input."""
        if not data:
            self.receive_eof()
        elif self._state in (State.HTTP, State.UPGRADE_PENDING):
            # While an upgrade waits for the caller, h11 buffers what follows.
            self._h11.receive_data(data)
            if self._state is State.HTTP:
                self._process_http()
        elif self._state in (State.OPEN, State.CLOSING):
            self._receive_frames(data)

    def receive_eof(self) -> None:
        """The peer closed its side of TCP."""
        if self._state is State.HTTP:
            # Requests already read are still answered: h11 reports the close
            # (ConnectionClosed) once they are, and _process_http ends there.
            self._h11.receive_data(b"")
            self._process_http()
        elif self._state is State.UPGRADE_PENDING:
            self._set_state(State.CLOSED)
        elif self._state in (State.OPEN, State.CLOSING):
            self._receive_websocket_eof()

    def data_to_send(self) -> list[bytes]:
        """Bytes to write to the peer since the last call, in order.

        In the HTTP phase, taking them resumes parsing pipelined requests:
        call ``events_received()`` again afterwards.
        """
        out = super().data_to_send()
        if self._state is State.HTTP:
            self._process_http()
        return out

    # -- HTTP ----------------------------------------------------------------

    def send_response(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: Headers = (),
        close: bool = False,
    ) -> None:
        """Answer the pending HTTP request (or reject a pending upgrade).

        Args:
            status: HTTP status code.
            body: Response body.
            content_type: Value of the Content-Type header.
            headers: Extra headers as ``(name, value)`` pairs. The
                :data:`~.http.SECURITY_HEADERS` not named here are added.
            close: Close the connection after this response (no keep-alive).

        Raises:
            LocalProtocolError: No request is waiting for an answer.
        """
        if self._answered_with_error:
            return  # the request turned out malformed (e.g. a bad chunk): already answered
        if not (self._awaiting_response or self._state is State.UPGRADE_PENDING):
            raise LocalProtocolError(f"no HTTP request to answer in state {self._state.value}")
        if self._state is State.UPGRADE_PENDING:
            self._set_state(State.HTTP)
            close = True  # a refused upgrade leaves unknown bytes behind: do not reuse
        self._awaiting_response = False
        named = {name.lower() for name, _ in headers}
        all_headers = [
            SERVER_HEADER,
            ("content-type", content_type),
            ("content-length", str(len(body))),
            *(header for header in SECURITY_HEADERS if header[0] not in named),
            *headers,
        ]
        if close:
            all_headers.append(("connection", "close"))
        reason = STATUS_TEXT.get(status, "").encode()
        self._send_h11(h11.Response(status_code=status, headers=all_headers, reason=reason))
        # RFC 9110 9.3.2: a HEAD response carries GET's header fields (Content-Length
        # included) and no content; h11 refuses body bytes for it.
        if body and self._request_method != b"HEAD":
            self._send_h11(h11.Data(data=body))
        self._send_h11(h11.EndOfMessage())
        self._request_method = b""
        self._process_http()

    def _send_h11(
        self, event: h11.Response | h11.InformationalResponse | h11.Data | h11.EndOfMessage
    ) -> None:
        # h11 writes b"" for an EndOfMessage after a Content-Length body: keep
        # b"" out of data_to_send, where it would mean "half-close TCP".
        data = self._h11.send(event)
        if data:
            self._out.append(data)

    def _process_http(self) -> None:
        while self._state is State.HTTP:
            if self._awaiting_response and self._h11.their_state in (h11.DONE, h11.MUST_CLOSE):
                return  # the request is read; what follows waits for its answer
            if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
                self._h11.start_next_cycle()
            if self._h11.our_state in (h11.MUST_CLOSE, h11.CLOSED):
                self._set_state(State.CLOSED)
                return
            if self._h11.our_state is h11.IDLE and self._pending_output() > self.max_pending_output:
                return  # bounded pipelining: data_to_send() resumes here
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._http_error(exc.error_status_hint, str(exc) or "malformed HTTP request")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_body(event.data)
            elif isinstance(event, h11.EndOfMessage):
                if self._pending_request is not None:
                    self._on_upgrade_request()
                    return
                if self._reading is not None:
                    self._on_request_read()
            elif isinstance(event, h11.ConnectionClosed):
                self._set_state(State.CLOSED)
                return

    def _pending_output(self) -> int:
        return sum(len(chunk) for chunk in self._out)

    def _on_request(self, request: h11.Request) -> None:
        # h11 enforces the cap only on a head still arriving; a whole head that
        # came in one read is measured here, so the limit does not depend on timing.
        self._request_method = request.method
        head_size = len(request.target) + sum(len(k) + len(v) + 4 for k, v in request.headers)
        if head_size > self.max_request_head:
            self._awaiting_response = True
            self._http_error(431, "request header fields too large")
            return
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        headers = decode_headers(request.headers)
        host = header_value(headers, "host")
        if not self.host_policy.check(host):
            # RFC 9110 15.5.20: 421, the server does not answer for this authority.
            self._reject(421, f"host not allowed: {host or '(empty)'} (see --allow-host)")
            return
        if path in self.websocket_paths and tries_to_upgrade(headers):
            version = request.http_version.decode("latin-1")
            self._pending_request = (path, query, headers)
            rejection = check_websocket_request(
                request.method.decode("latin-1"), version, headers, self.origin_policy
            )
            if rejection is not None:
                self._pending_request = None
                self._reject(rejection.status, rejection.reason, rejection.headers, rejection.probe)
            return
        length = header_value(headers, "content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_request_body:
            self._reject(413, f"request body over {self.max_request_body} bytes")
            return
        self._reading = (request.method.decode("latin-1"), path, query, headers)
        self._body, self._body_size = [], 0
        if self._h11.client_is_waiting_for_100_continue:
            # RFC 9110 10.1.1: the client waits for this before it sends the body.
            self._send_h11(h11.InformationalResponse(status_code=100, headers=[]))

    def _on_body(self, data: bytes) -> None:
        if self._reading is None:
            return  # the body of a request already refused: not kept
        self._body_size += len(data)
        if self._body_size > self.max_request_body:
            self._reading, self._body = None, []
            self._reject(413, f"request body over {self.max_request_body} bytes")
            return
        self._body.append(data)

    def _on_request_read(self) -> None:
        assert self._reading is not None
        method, path, query, headers = self._reading
        body = b"".join(self._body)
        self._reading, self._body = None, []
        self._awaiting_response = True
        self._events.append(HttpRequest(method, path, query, headers, body))

    def _reject(self, status: int, reason: str, headers: Headers = (), probe: bool = False) -> None:
        """Answer the current request ourselves and close (RequestRejected)."""
        self._awaiting_response = True
        self._events.append(RequestRejected(status, reason, probe))
        self.send_response(status, f"{reason}\n".encode(), headers=headers, close=True)

    def _on_upgrade_request(self) -> None:
        assert self._pending_request is not None
        path, query, headers = self._pending_request
        self._set_state(State.UPGRADE_PENDING)
        self._events.append(WebSocketRequest(path, query, headers))

    def _http_error(self, status: int, reason: str) -> None:
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._reject(status, reason)
            self._answered_with_error = True
        self._set_state(State.CLOSED)

    # -- WebSocket -----------------------------------------------------------

    def accept_websocket(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        accept_binary: bool = False,
        compression: bool | DeflatePolicy = False,
    ) -> None:
        """Accept the pending upgrade: send the 101 and start framing.

        Args:
            max_message_size: Cap on a reassembled, decompressed message; over it: 1009.
            accept_binary: Whether binary messages are allowed (else 1003).
            compression: Negotiate permessage-deflate when the client offers it,
                with this :class:`~.deflate.DeflatePolicy` (``True``: a default
                one for this connection alone). Off by default. Give every
                connection the same policy so broadcasts are compressed once.

        Raises:
            LocalProtocolError: No upgrade request is pending.
        """
        if self._state is not State.UPGRADE_PENDING or self._pending_request is None:
            raise LocalProtocolError(f"no upgrade to accept in state {self._state.value}")
        _, _, headers = self._pending_request
        self._pending_request = None
        key = header_value(headers, "sec-websocket-key")
        assert key is not None  # checked by check_websocket_request
        response_headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", accept_token(key).encode("ascii")),
        ]
        deflate: ServerPerMessageDeflate | None = None
        if compression is not False:
            policy = DeflatePolicy() if compression is True else compression
            accepted = policy.accept(offered_extensions(headers), max_message_size)
            if accepted is not None:
                answer, deflate = accepted
                response_headers.append((b"sec-websocket-extensions", answer.encode("ascii")))
                self.deflater = deflate.deflater
        self._send_h11(
            h11.InformationalResponse(
                status_code=101, headers=response_headers, reason=b"Switching Protocols"
            )
        )
        # h11's "closed" flag cannot be set here: EOF while the upgrade was
        # pending already closed the connection (receive_eof).
        trailing, _ = self._h11.trailing_data
        # The HTTP phase is over: h11's state and buffers are not kept for the
        # connection's life (a server holds thousands of these).
        del self._h11
        self._open_websocket(
            ConnectionType.SERVER, deflate, max_message_size, accept_binary, trailing
        )
