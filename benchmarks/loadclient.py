"""One load-generator client: a bare non-blocking socket read from a uvloop reader callback.

Not an ``asyncio.Protocol``: in latency mode each read is a ``recvmsg_into`` that also
returns the kernel's receive timestamp (SO_TIMESTAMPNS), so the time a delivery reached
this machine's socket is known even when the load generator itself reads it later.

Every read lands in the worker's one large buffer (``recv_into``, no allocation per read).
The frames are walked by the native scanner (``_scan.c``) while they are the common case
(in-order message frames); any other frame goes through :meth:`Client._frame` in Python,
which does the same checks and everything else (pings, closes, inflating, markers, acks).
While a throughput phase has much left to deliver, a receiving client's socket has
``SO_RCVLOWAT`` raised so one wake-up reads many frames.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import socket
import struct
import time
import zlib
from typing import TYPE_CHECKING

from wire import (
    CHROMIUM_OFFER,
    Compressor,
    Deflate,
    SeqCheck,
    chat_payload,
    inflate_one,
    mask_frame,
    parse_send_ns,
    parse_seq,
)

if TYPE_CHECKING:
    from worker import Worker

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; stamps are CLOCK_REALTIME
SO_RCVLOWAT = getattr(socket, "SO_RCVLOWAT", 18)
_TIMESPEC = struct.Struct("@qq")
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TAIL = b"\x00\x00\xff\xff"
# No message event of an n-character text is shorter than n + EVENT_OVERHEAD bytes
# (the JSON keys alone take more), and none compressed is shorter than MIN_COMPRESSED:
# bytes still due >= frames still due x min_frame, what SO_RCVLOWAT may wait for.
EVENT_OVERHEAD = 60
MIN_COMPRESSED = 16

# what a receiver does with each text frame
JOIN, COUNT, LATENCY, IDLE = range(4)


class Client:
    """One WebSocket client of a :class:`loadgen.Worker`."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.w = worker
        self.index = index
        self.username = f"s{index}"
        self.tag = b'"username":"%s"' % self.username.encode()
        self.room_index = worker.room_of(index)
        self.room = worker.room_name(self.room_index)
        self.sender = worker.is_sender(index)
        self.marker_sender = worker.is_marker_sender(index)
        self.markers_expected = worker.markers_in_room(self.room_index)
        self.sock: socket.socket | None = None
        self.out = b""  # what the socket did not take yet
        self.handshake: bytes | None = b""  # None once open
        self.accept = b""
        self.opened: asyncio.Future[None] = worker.loop.create_future()
        self.buf = b""  # an incomplete frame left from the last read
        self.closed = False
        self.close_code: int | None = None
        self.deflate: Deflate | None = None
        self.compressor: Compressor | None = None
        self.inflater: zlib._Decompress | None = None  # context takeover: one per client
        self.check = SeqCheck()
        self.last_seq = 0  # the room's highest seq this client saw
        self.lowat = 1
        self.min_frame = MIN_COMPRESSED
        self.reset()

    def reset(self) -> None:
        self.count = 0  # message frames received in the phase (duplicates included)
        self.marks = 0  # markers of the current round seen
        self.acked = 0  # own messages seen back (senders)
        self.done = False

    def high_seq(self) -> int:
        return max(self.last_seq, self.check.nxt - 1, max(self.check.ahead, default=0))

    # -- socket -------------------------------------------------------------

    async def open(self, timeout: float) -> None:
        w = self.w
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # before connect: the kernel then stamps every segment this socket receives
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock = sock
        port = w.ports[self.index % len(w.ports)]
        try:
            await asyncio.wait_for(w.loop.sock_connect(sock, (w.host, port)), timeout)
        except BaseException:
            sock.close()
            self.closed = True
            raise
        w.loop.add_reader(sock.fileno(), self.readable)
        key = base64.b64encode(random.randbytes(16))
        self.accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        offer = b"Sec-WebSocket-Extensions: %s\r\n" % CHROMIUM_OFFER if w.offer_deflate else b""
        self.write(
            b"GET /ws?room=%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"%s\r\n" % (self.room.encode(), w.host.encode(), port, key, offer)
        )
        try:
            await asyncio.wait_for(asyncio.shield(self.opened), timeout)
        except BaseException:
            self.abort()
            raise

    def readable(self) -> bool:
        """Read what the socket has into the worker's buffer and handle it; False: nothing."""
        sock = self.sock
        if sock is None or self.closed:
            return False
        w = self.w
        held = len(self.buf)
        if held:
            w.rbuf[:held] = self.buf
        stamp = 0
        try:
            if w.mode == LATENCY:
                n, ancillary, _, _ = sock.recvmsg_into([w.rview[held:]], 64)
                for level, kind, value in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                        stamp = seconds * 1_000_000_000 + nanoseconds
            else:
                n = sock.recv_into(w.rview[held:])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.lost(exc)
            return False
        if not n:
            self.lost(None)
            return False
        w.bytes_in += n
        end = held + n
        if self.handshake is not None:
            rest = self._handshake(bytes(w.rbuf[:end]))
            if not rest:
                self.buf = b""
                return True
            w.rbuf[: len(rest)] = rest
            end = len(rest)
        self._process(end, stamp)
        return True

    def set_lowat(self, lowat: int) -> None:
        if self.sock is not None and not self.closed and lowat != self.lowat:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVLOWAT, lowat)
            self.lowat = lowat

    def write(self, data: bytes) -> None:
        if self.closed or self.sock is None:
            return
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.lost(exc)
            return
        if sent < len(data):
            self.out = data[sent:]
            self.w.loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.lost(exc)
            return
        self.out = self.out[sent:]
        if not self.out:
            self.w.loop.remove_writer(self.sock.fileno())

    def abort(self) -> None:
        if self.sock is not None and not self.closed:
            self.closed = True
            self.w.loop.remove_reader(self.sock.fileno())
            self.w.loop.remove_writer(self.sock.fileno())
            self.sock.close()

    def lost(self, exc: Exception | None) -> None:
        self.abort()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc!r}"))
        elif not self.done:  # it will receive no more: stop waiting for it (counted missing)
            self.done = True
            self.w.client_done()

    def send_text(self, text: str) -> None:
        payload = chat_payload(self.username, text)
        if self.compressor is not None:
            self.write(mask_frame(self.compressor.compress(payload), rsv1=True))
        else:
            self.write(mask_frame(payload))

    # -- WebSocket ----------------------------------------------------------

    def _handshake(self, data: bytes) -> bytes:
        assert self.handshake is not None
        head = self.handshake + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.handshake = head
            return b""
        self.handshake = None
        response = head[:end].lower()
        if not response.startswith(b"http/1.1 101") or self.accept.lower() not in response:
            if not self.opened.done():
                self.opened.set_exception(
                    ConnectionError(head[:end].split(b"\r\n", 1)[0].decode("latin-1"))
                )
            self.abort()
            return b""
        self.deflate = Deflate.from_response(response)
        if self.deflate is not None:
            if self.w.compress_out:
                self.compressor = Compressor(self.deflate)
            if not self.deflate.server_no_context_takeover:
                self.inflater = zlib.decompressobj(-15)
        self.opened.set_result(None)
        return head[end + 4 :]

    def _process(self, end: int, stamp: int) -> None:
        """Handle the complete frames in ``rbuf[:end]``; keep an incomplete one for later."""
        w = self.w
        buf = w.rbuf
        mode = w.mode
        pos = 0
        scan = w.scan if mode == LATENCY or (mode == COUNT and not self.sender) else None
        check = self.check
        now = time.time_ns() if mode == LATENCY else 0
        while True:
            if scan is not None and not check.ahead:
                pos, count, check.nxt, stop, lat, obs, packed = scan(
                    buf,
                    pos,
                    end,
                    check.nxt,
                    w.cache if self.inflater is None else None,
                    mode == LATENCY,
                    w.record_from,
                    stamp,
                    now,
                )
                self.count += count
                w.compressed += packed
                if lat:
                    w.latencies.frombytes(lat)
                    w.observed.frombytes(obs)
                if stop == 2:
                    continue
                if stop == 0:
                    break
            after = self._frame(buf, pos, end, stamp, now)
            if after < 0 or self.closed:
                break
            pos = after
        if self.closed:
            return
        self.buf = bytes(buf[pos:end]) if pos < end else b""
        if mode in (COUNT, LATENCY):
            if self.sender and mode == COUNT:
                w.sender_progress(self)
            if not self.done and check.unique >= check.expected:
                self.done = True
                w.client_done()
            elif self.lowat > 1 and (check.expected - check.unique) * self.min_frame < self.lowat:
                self.set_lowat(1)  # the rest may be less than the mark: read it as it comes

    def _frame(self, buf: bytearray, pos: int, end: int, stamp: int, now: int) -> int:
        """One frame on the Python path; returns the position after it (-1: incomplete)."""
        n = end - pos
        if n < 2:
            return -1
        length = buf[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            if n < 4:
                return -1
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            start = pos + 4
        elif length == 127:
            if n < 10:
                return -1
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            start = pos + 10
        masked = buf[pos + 1] & 0x80  # servers must not mask (RFC 6455 5.1)
        if masked:
            start += 4
        stop = start + length
        if stop > end:
            return -1
        first = buf[pos]
        opcode = first & 0x0F
        w = self.w
        if masked:
            w.malformed += 1
        elif opcode == 1 and first & 0x80:
            payload = bytes(buf[start:stop])
            text = self._inflate(payload) if first & 0x40 else payload
            w.compressed += first >> 6 & 1
            if text is None:
                w.malformed += 1
            else:
                self._on_text(text, stamp, now)
        elif opcode == 9:  # ping: answer with a masked pong
            self.write(mask_frame(bytes(buf[start:stop]), 0xA))
        elif opcode == 8:
            self.close_code = (buf[start] << 8 | buf[start + 1]) if length >= 2 else 1005
            self.write(mask_frame(bytes(buf[start : start + 2]), 0x8))
            self.lost(None)
        elif opcode != 0xA:  # binary, fragments: the benchmark's servers send neither
            w.malformed += 1
        return stop

    def _inflate(self, payload: bytes) -> bytes | None:
        w = self.w
        try:
            if self.inflater is not None:  # context takeover: every frame, in order
                return self.inflater.decompress(payload + _TAIL)
            if self.deflate is None:
                return None  # RSV1 without a negotiated extension
            text = w.texts.get(payload)
            if text is None:  # the first copy of this payload: inflate it once
                text = w.texts[payload] = inflate_one(payload)
                seq = parse_seq(text)
                if seq is not None:
                    w.cache[payload] = seq
            return text
        except zlib.error:
            return None

    def _on_text(self, text: bytes, stamp: int, now: int) -> None:
        w = self.w
        mode = w.mode
        seq = parse_seq(text)
        if mode == JOIN:
            if seq is not None:
                self.last_seq = max(self.last_seq, seq)
            if w.mark in text:
                self.marks += 1
            return
        if mode == IDLE:
            w.unexpected(text)
            return
        if seq is None:  # not a message event (an error, presence): nothing this phase asked
            self.check.unexpected += 1
            w.sample(text)
            return
        self.count += 1
        self.check.see(seq)
        if mode == COUNT:
            if self.sender and self.tag in text:
                self.acked += 1
        else:
            sent = parse_send_ns(text)
            if sent is not None and sent >= w.record_from:
                w.latencies.append((stamp or now) - sent)
                w.observed.append(now - sent)
