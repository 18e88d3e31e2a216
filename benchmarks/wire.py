"""What the load generator's clients put on the wire and how they check what comes back.

- Client frames: masked with a fresh random key (RFC 6455 5.3), optionally compressed
  (permessage-deflate, RFC 7692) the way a browser does: its own compressor with context
  takeover unless the server asked for ``client_no_context_takeover``.
- The browser profile's offer is Chromium's: ``permessage-deflate; client_max_window_bits``.
- :class:`SeqCheck` checks one client's deliveries of one phase: every seq of the phase
  exactly once and in order, with missing, duplicate and out-of-order deliveries and
  unexpected frames counted apart.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass, field

MESSAGE_SIZE = 100  # characters of chat text per message, unless a phase says otherwise
CHROMIUM_OFFER = b"permessage-deflate; client_max_window_bits"
_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 7.2.1: removed by the sender, appended to inflate


def mask_frame(payload: bytes, opcode: int = 0x1, rsv1: bool = False) -> bytes:
    """One final client frame: masked with a random 4-byte key, as RFC 6455 requires."""
    n = len(payload)
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, 0xFE, n)
    else:
        header = struct.pack("!BBQ", first, 0xFF, n)
    key = random.randbytes(4)
    if not n:
        return header + key
    keystream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(keystream, "little")).to_bytes(
        n, "little"
    )
    return header + key + masked


def chat_payload(username: str, text: str) -> bytes:
    """A seed-format chat message (no ``type``: the client stays legacy, gets only messages)."""
    return b'{"username":"%s","message":"%s"}' % (username.encode(), text.encode())


_WORDS = (  # noqa: SIM905 (a word list is easier to read as text)
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part "
    "ok thanks lol meeting tomorrow deploy build server chat room message later sure yes"
).split()
_FILLERS: dict[int, list[str]] = {}


def _fillers(size: int) -> list[str]:
    """1,024 chat-like word salads per size, seeded: text about as compressible as chat."""
    if size not in _FILLERS:
        rng = random.Random(size)
        pool = []
        for _ in range(1024):
            words: list[str] = []
            length = 0
            while length < size:
                words.append(rng.choice(_WORDS))
                length += len(words[-1]) + 1
            pool.append(" ".join(words))
        _FILLERS[size] = pool
    return _FILLERS[size]


def bench_text(send_ns: int, k: int, size: int = MESSAGE_SIZE) -> str:
    """A benchmark message: send time first (19 digits), ``k``, then words up to ``size``.

    The words vary between messages so that deflate, with context takeover too, sees
    text about as compressible as chat, not one message repeated.
    """
    head = f"{send_ns:019d}|{k:09d}|"
    return head + _fillers(size)[k % 1024][: max(0, size - len(head))]


def parse_seq(payload: bytes | bytearray) -> int | None:
    """The ``seq`` of a message event, read without decoding the JSON."""
    i = payload.find(b'"seq":')
    if i < 0:
        return None
    j = k = i + 6
    while k < len(payload) and 48 <= payload[k] <= 57:
        k += 1
    return int(payload[j:k]) if k > j else None


def parse_send_ns(payload: bytes | bytearray) -> int | None:
    """The send time a benchmark message carries (its first 19 characters of text)."""
    i = payload.find(b'"message":"')
    if i < 0:
        return None
    digits = payload[i + 11 : i + 30]
    return int(digits) if len(digits) == 19 and digits.isdigit() else None


@dataclass(frozen=True)
class Deflate:
    """permessage-deflate as the server accepted it (RFC 7692 7.1)."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15

    @classmethod
    def from_response(cls, head: bytes) -> Deflate | None:
        """The accepted extension from a lower-cased 101 response head (None: declined)."""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip() != b"sec-websocket-extensions":
                continue
            for offer in value.split(b","):
                params = [p.strip() for p in offer.split(b";")]
                if params[0] != b"permessage-deflate":
                    continue
                flags: dict[str, bool | int] = {}
                for param in params[1:]:
                    key, _, number = param.partition(b"=")
                    name_ = key.strip().decode()
                    flags[name_] = int(number.strip(b' "')) if number else True
                return cls(
                    server_no_context_takeover=bool(flags.get("server_no_context_takeover")),
                    client_no_context_takeover=bool(flags.get("client_no_context_takeover")),
                    server_max_window_bits=int(flags.get("server_max_window_bits", 15)),
                    client_max_window_bits=int(flags.get("client_max_window_bits", 15)),
                )
        return None


class Compressor:
    """A client's outgoing permessage-deflate (RFC 7692 7.2.1)."""

    def __init__(self, deflate: Deflate) -> None:
        self.bits = deflate.client_max_window_bits
        self.reset = deflate.client_no_context_takeover
        self._z = zlib.compressobj(wbits=-self.bits)

    def compress(self, payload: bytes) -> bytes:
        data = self._z.compress(payload) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if self.reset:
            self._z = zlib.compressobj(wbits=-self.bits)
        return data[:-4] if data.endswith(_TAIL) else data


def inflate_one(payload: bytes) -> bytes:
    """Inflate a message compressed with no context takeover (window 15 reads any smaller)."""
    return zlib.decompressobj(-15).decompress(payload + _TAIL)


@dataclass
class SeqCheck:
    """One client's deliveries in a phase: the room's seqs ``base+1 .. base+expected``.

    The fast path (``seq == nxt`` with nothing ahead) is one compare; the native scanner
    runs it in C. Everything else goes through :meth:`see`.
    """

    base: int = 0
    expected: int = 0
    nxt: int = 1  # the next seq that keeps the prefix contiguous
    ahead: set[int] = field(default_factory=set)  # seen, beyond a gap
    duplicate: int = 0
    out_of_order: int = 0  # arrived after a larger seq
    unexpected: int = 0  # outside the phase's seqs

    def start(self, base: int, expected: int) -> None:
        self.base, self.expected, self.nxt = base, expected, base + 1
        self.ahead = set()
        self.duplicate = self.out_of_order = self.unexpected = 0

    @property
    def unique(self) -> int:
        return self.nxt - self.base - 1 + len(self.ahead)

    @property
    def missing(self) -> int:
        return max(0, self.expected - self.unique)

    def see(self, seq: int) -> None:
        if seq <= self.base or seq > self.base + self.expected:
            self.unexpected += 1
        elif seq == self.nxt:
            if self.ahead:
                self.out_of_order += 1
                self.nxt += 1
                while self.nxt in self.ahead:
                    self.ahead.discard(self.nxt)
                    self.nxt += 1
            else:
                self.nxt += 1
        elif seq < self.nxt or seq in self.ahead:
            self.duplicate += 1
        else:
            if any(s > seq for s in self.ahead):
                self.out_of_order += 1
            self.ahead.add(seq)
