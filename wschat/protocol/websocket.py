"""The WebSocket phase, shared by both sides: framing, messages, pings, closing.

Theory of operation
-------------------
:class:`WebSocketConnection` is the base of
:class:`~wschat.protocol.connection.ServerConnection` and
:class:`~wschat.protocol.client.ClientConnection`. Each subclass runs its own
HTTP handshake and then calls :meth:`WebSocketConnection._open_websocket` with
the negotiated extensions; from there on this class does everything, the same
way on both sides.

wsproto frames and unframes (masking included: a client masks, a server
refuses unmasked frames) but leaves policy to us. This class answers pings,
echoes closes, reassembles fragmented messages, refuses binary where it is
not wanted (1003) and, through :class:`~.limits.MessageSizeLimit` and
:class:`~.deflate.CappedPerMessageDeflate`, messages over the size cap
(1009), counted across fragments and after decompression.

Output order when the peer breaks the protocol
----------------------------------------------
One read may carry good frames followed by a bad one. The messages before the
bad frame are delivered, and the caller's replies to them (an echo server's
``send_text``) must reach the peer before the failing close frame: the
connection fails *at* the bad frame (RFC 6455 7.1.7), and Autobahn counts a
close that overtakes the echo of an earlier message as NON-STRICT. So while
messages wait in :meth:`~WebSocketConnection.events_received`, the close
frame is held; the first :meth:`~WebSocketConnection.data_to_send` after the
caller took them appends it after whatever the caller queued in between.
Until then ``send_text``/``send_binary`` still work, ``state`` is already
``CLOSED`` and :meth:`~WebSocketConnection.close_expected` stays false.
The I/O layer's loop is the usual one: ``receive_data``, ``events_received``
(answer each), ``data_to_send``.

The common frame without wsproto
--------------------------------
Nearly every frame a chat server reads is a client's whole, unfragmented,
uncompressed text message of a few hundred bytes. On the server side,
without permessage-deflate, :meth:`WebSocketConnection._receive_frames` reads
such frames itself while wsproto holds nothing (no partial frame buffered, no
fragmented message under way): header, unmasking and one strict UTF-8 decode,
a fifth of what wsproto's pipeline costs per frame. The first frame that is
anything else (control, fragment, RSV bit, 64-bit length, over the size cap,
invalid UTF-8, incomplete) and everything after it goes to wsproto, which
then sees exactly the bytes it would have seen at a frame boundary: same
events, same close codes.
"""

from __future__ import annotations

from wsproto import ConnectionType
from wsproto import connection as ws
from wsproto import events as wse
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, MessageDecoder

from .deflate import CappedPerMessageDeflate
from .events import (
    BinaryReceived,
    ConnectionClosed,
    Event,
    PongReceived,
    TextReceived,
)
from .limits import MessageSizeLimit
from .state import State, check_transition

_FIN_TEXT = 0x81  # FIN set, no RSV bit, opcode 1 (text)

# DESIGN.md: 64 KiB frame/message hard cap on the chat endpoint (gorilla chat: 512 B).
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024


class WebSocketConnection:
    """Sans-IO WebSocket phase of one TCP connection; subclassed by each side.

    Args:
        initial: The state the subclass starts in (before the WebSocket opens).
    """

    def __init__(self, initial: State) -> None:
        self._state = initial
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._ws: ws.Connection | None = None
        self._accept_binary = True
        self._text_parts: list[str] = []
        self._binary_parts: list[bytes] = []
        self._close_code = CloseReason.NORMAL_CLOSURE.value
        self._close_reason = ""
        # A failing close frame held until the caller took the messages before it.
        self._held_close: tuple[int, str] | None = None
        self._held_events_taken = False
        # Server side without extensions: the frame decoder and message decoder of
        # wsproto, whose idleness allows the fast path (see the module docstring).
        self._idle_check: tuple[FrameDecoder, MessageDecoder] | None = None
        self._max_message_size = DEFAULT_MAX_MESSAGE_SIZE
        self.compressed = False
        """True when this WebSocket negotiated permessage-deflate."""

    # -- state and outputs -----------------------------------------------------

    @property
    def state(self) -> State:
        """The connection's :class:`~.state.State`."""
        return self._state

    def events_received(self) -> list[Event]:
        """Events produced since the last call, oldest first."""
        events, self._events = self._events, []
        if self._held_close is not None:
            self._held_events_taken = True
        return events

    def data_to_send(self) -> list[bytes]:
        """Bytes to write to the peer since the last call, in order."""
        if self._held_close is not None and self._held_events_taken:
            code, reason = self._held_close
            self._held_close = None
            assert self._ws is not None
            self._out.append(self._ws.send(wse.CloseConnection(code=code, reason=reason)))
        out, self._out = self._out, []
        return out

    def close_expected(self) -> bool:
        """True when the I/O layer should close TCP after flushing ``data_to_send``."""
        return self._state is State.CLOSED and self._held_close is None

    # -- sending ---------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Queue a text message (ignored once the close handshake has started)."""
        if self._can_send_messages():
            assert self._ws is not None
            self._out.append(self._ws.send(wse.TextMessage(data=text)))

    def send_binary(self, data: bytes) -> None:
        """Queue a binary message (ignored once the close handshake has started)."""
        if self._can_send_messages():
            assert self._ws is not None
            self._out.append(self._ws.send(wse.BytesMessage(data=data)))

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a Ping (keepalive). Ignored unless the WebSocket is open."""
        if self._state is State.OPEN:
            assert self._ws is not None
            self._out.append(self._ws.send(wse.Ping(payload=payload)))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 7.1.2). Idempotent.

        Before the WebSocket is open this just ends the connection.
        """
        if self._state is State.OPEN:
            assert self._ws is not None
            self._close_code, self._close_reason = code, reason
            self._out.append(self._ws.send(wse.CloseConnection(code=code, reason=reason)))
            self._set_state(State.CLOSING)
        elif self._state is not State.CLOSING:
            self._set_state(State.CLOSED)

    def _can_send_messages(self) -> bool:
        # While a failing close is held, replies to the messages before it still go.
        return self._state is State.OPEN or self._held_close is not None

    # -- receiving -------------------------------------------------------------

    def _open_websocket(
        self,
        connection_type: ConnectionType,
        deflate: CappedPerMessageDeflate | None,
        max_message_size: int,
        accept_binary: bool,
        trailing: bytes,
    ) -> None:
        """Start framing with the negotiated extension and the message-size cap.

        Args:
            connection_type: Which side this is (a client masks its frames).
            deflate: The finalized permessage-deflate, or None when not negotiated.
            max_message_size: Cap on a reassembled, decompressed message; over it: 1009.
            accept_binary: Whether binary messages are allowed (else 1003).
            trailing: Bytes read past the handshake (often the first frame).
        """
        extensions: list[Extension] = []
        if deflate is not None:
            extensions.append(deflate)
            self.compressed = True
        extensions.append(MessageSizeLimit(max_message_size))
        self._ws = ws.Connection(connection_type, extensions)
        self._accept_binary = accept_binary
        self._max_message_size = max_message_size
        if connection_type is ConnectionType.SERVER and deflate is None:
            self._idle_check = _decoders(self._ws)
        self._set_state(State.OPEN)
        if trailing:
            self._receive_frames(trailing)

    def _receive_frames(self, data: bytes) -> None:
        assert self._ws is not None
        if self._idle_check is not None:
            data = self._receive_plain_texts(data)
            if not data:
                return
        self._ws.receive_data(data)
        for event in self._ws.events():
            if isinstance(event, (wse.TextMessage, wse.BytesMessage)):
                if self._state is State.OPEN:
                    self._on_message(event)
            elif isinstance(event, wse.Ping):
                # RFC 6455 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a
                # Pong frame in response" -- wsproto leaves that to us.
                if self._state is State.OPEN:
                    self._out.append(self._ws.send(event.response()))
            elif isinstance(event, wse.Pong):
                self._events.append(PongReceived(bytes(event.payload)))
            elif isinstance(event, wse.CloseConnection):
                self._on_close_frame(event)
            if self._state is State.CLOSED:
                return

    def _receive_plain_texts(self, data: bytes) -> bytes:
        """Read the whole, plain text frames at the start of ``data`` without wsproto.

        Returns the bytes from the first frame that is not one (for wsproto).
        Only while wsproto is idle at a frame boundary, so that it sees what
        follows exactly as if it had read the frames before itself.
        """
        assert self._idle_check is not None and self._ws is not None
        frames, messages = self._idle_check
        if (
            frames.header is not None
            or frames.buffer.buffer
            or messages.opcode is not None
            or self._ws._events
            or self._state is not State.OPEN
        ):
            return data
        end, limit, events = len(data), self._max_message_size, self._events
        start = 0
        while end - start >= 6 and data[start] == _FIN_TEXT:
            length = data[start + 1] ^ 0x80  # the mask bit must be set: else >= 128 now
            if length < 126:
                head = start + 6
            elif length == 126 and end - start >= 8:
                length = (data[start + 2] << 8) | data[start + 3]
                if length < 126:
                    break  # a 2-byte length for a short frame is a protocol error
                head = start + 8
            else:
                break  # unmasked (>= 128), a 64-bit length, or a header cut short
            stop = head + length
            if stop > end or length > limit:
                break
            mask = data[head - 4 : head]
            masked = int.from_bytes(data[head:stop], "little")
            key = int.from_bytes(mask * ((length >> 2) + 1), "little")
            payload = (masked ^ key).to_bytes(length + 4, "little")[:length]
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # wsproto fails it with 1007
            events.append(TextReceived(text))
            start = stop
        return data[start:] if start else data

    def _receive_websocket_eof(self) -> None:
        # RFC 6455 7.1.5: with no close frame, the close code is 1006.
        self._closed(CloseReason.ABNORMAL_CLOSURE.value, "", by_peer=True)

    def _on_message(self, event: wse.TextMessage | wse.BytesMessage) -> None:
        if isinstance(event, wse.TextMessage):
            self._text_parts.append(event.data)
            if event.message_finished:
                parts, self._text_parts = self._text_parts, []
                self._events.append(TextReceived(parts[0] if len(parts) == 1 else "".join(parts)))
        elif not self._accept_binary:
            self._fail(CloseReason.UNSUPPORTED_DATA.value, "binary messages are not accepted")
        else:
            self._binary_parts.append(bytes(event.data))
            if event.message_finished:
                parts_b, self._binary_parts = self._binary_parts, []
                self._events.append(BinaryReceived(b"".join(parts_b)))

    def _on_close_frame(self, event: wse.CloseConnection) -> None:
        assert self._ws is not None
        if self._ws.state is ws.ConnectionState.REMOTE_CLOSING:
            # RFC 6455 5.5.1: "the endpoint MUST send a Close frame in response".
            self._out.append(self._ws.send(event.response()))
            self._closed(event.code, event.reason or "", by_peer=True)
        elif self._ws.state is ws.ConnectionState.CLOSED:
            # The peer's answer to our close: the handshake is complete.
            self._closed(self._close_code, self._close_reason, by_peer=False)
        else:
            # wsproto reports a frame it could not parse as a close event
            # while its state is still open: the peer broke the protocol.
            self._fail(event.code, event.reason or "protocol error")

    def _fail(self, code: int, reason: str) -> None:
        """RFC 6455 7.1.7: fail the WebSocket connection (close frame, then TCP)."""
        assert self._ws is not None
        if self._ws.state is ws.ConnectionState.OPEN:
            if any(isinstance(e, (TextReceived, BinaryReceived)) for e in self._events):
                self._held_close, self._held_events_taken = (code, reason), False
            else:
                self._out.append(self._ws.send(wse.CloseConnection(code=code, reason=reason)))
        self._closed(code, reason, by_peer=False)

    def _closed(self, code: int, reason: str, by_peer: bool) -> None:
        self._text_parts, self._binary_parts = [], []
        self._set_state(State.CLOSED)
        self._events.append(ConnectionClosed(code, reason, by_peer))

    def _set_state(self, new: State) -> None:
        check_transition(self._state, new)
        self._state = new


def _decoders(connection: ws.Connection) -> tuple[FrameDecoder, MessageDecoder] | None:
    """wsproto's frame and message decoders of ``connection``, or None when this
    wsproto is not laid out as the fast path expects (it is then not taken)."""
    proto = getattr(connection, "_proto", None)
    frames = getattr(proto, "_frame_decoder", None)
    messages = getattr(proto, "_message_decoder", None)
    if (
        isinstance(frames, FrameDecoder)
        and isinstance(messages, MessageDecoder)
        and hasattr(frames, "header")
        and isinstance(getattr(getattr(frames, "buffer", None), "buffer", None), bytearray)
        and hasattr(messages, "opcode")
        and hasattr(connection, "_events")
    ):
        return frames, messages
    return None
