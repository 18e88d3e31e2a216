"""TransportWriter and the Flusher on real loopback TCP transports (asyncio and uvloop).

- A connection's first frame of a batch, in direct mode, is in the kernel at
  once, before any flush; what follows in the same batch waits for the flush
  and is written joined.
- The flusher batches after a batch that gave connections several frames, and
  goes direct again only after about DIRECT_AFTER batches' worth of connections
  got one frame each (small batches, a pong or an ack, count for little), and
  batches after a long batch that began with no idle time before it (a busy loop).
- Whatever mix of both paths, each connection's bytes arrive complete and in order.
- The byte limit still counts what the transport holds when frames go at once;
  one item over the limit is taken, alone, and the limit covers the rest.
- A held writer writes nothing, at once or flushed, until released.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import cast

import anyio
import pytest

from wschat.server.flusher import BUSY_BATCH, DIRECT_AFTER, Flusher
from wschat.server.writer import TransportWriter, WriteTransport

pytestmark = [pytest.mark.anyio, pytest.mark.every_loop(loops=("asyncio", "uvloop"))]


class Pair:
    """A real transport (the writer's end) and the plain socket at the other end."""

    def __init__(self, transport: WriteTransport, peer: socket.socket) -> None:
        self.transport = transport
        self.peer = peer
        self.received = b""

    def read_now(self) -> bytes:
        """What the kernel already holds for the peer (no waiting)."""
        while True:
            try:
                data = self.peer.recv(1 << 20)
            except BlockingIOError:
                return self.received
            if not data:
                return self.received
            self.received += data

    async def read_until(self, expected: int, timeout: float = 5.0) -> bytes:
        with anyio.fail_after(timeout):
            while len(self.read_now()) < expected:
                await anyio.sleep(0.005)
        return self.received


@asynccontextmanager
async def pairs(count: int, small_buffers: bool = False) -> AsyncIterator[list[Pair]]:
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        if small_buffers:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen(count)
        made: list[Pair] = []
        try:
            for _ in range(count):
                transport, _ = await loop.create_connection(
                    asyncio.Protocol, *listener.getsockname()
                )
                if small_buffers:
                    sock = transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                peer, _ = listener.accept()
                peer.setblocking(False)
                made.append(Pair(cast(WriteTransport, transport), peer))
            yield made
        finally:
            for pair in made:
                pair.transport.abort()
                pair.peer.close()


@contextmanager
def counted_flusher(busy_batch: float = 1.0) -> Iterator[tuple[Flusher, list[int]]]:
    """A flusher and the byte counts it reported. Unless a test is about a busy
    loop, a slow moment of the machine's is not taken for one."""
    counted: list[int] = []
    yield Flusher(counted.append, busy_batch), counted


def writer_for(pair: Pair, flusher: Flusher, limit: int = 1 << 20) -> TransportWriter:
    writer = TransportWriter(limit, pair.transport, flusher)
    writer.release()
    return writer


def mode(flusher: Flusher) -> str:
    return "direct" if flusher.direct else "batched"


def frame(n: int, size: int = 40) -> bytes:
    return f"<{n}>".encode().ljust(size, b".")


async def test_a_lone_frame_is_in_the_kernel_before_any_flush() -> None:
    with counted_flusher() as (flusher, counted):
        async with pairs(2) as (a, b):
            writers = [writer_for(a, flusher), writer_for(b, flusher)]
            assert flusher.direct
            for writer in writers:
                assert writer.put(frame(1))
                assert writer.queued == 0
            assert await a.read_until(40) == frame(1)
            assert await b.read_until(40) == frame(1)
            assert flusher.open  # the batch ends when the flusher runs
            flusher.flush()
            assert counted == [80]  # bytes written at once count too
            assert flusher.direct


async def test_more_frames_in_a_batch_wait_for_the_flush_and_turn_batching_on() -> None:
    with counted_flusher() as (flusher, counted):
        async with pairs(2) as both:
            writers = [writer_for(pair, flusher) for pair in both]
            for writer in writers:
                assert writer.put(frame(1))
                assert writer.put(frame(2))
                assert writer.put(frame(3))
                assert writer.queued == 80  # the second and third wait
            for pair in both:
                await anyio.sleep(0.05)
                assert pair.read_now() == frame(1)
            flusher.flush()
            assert mode(flusher) == "batched"  # three frames each: batch the next ones
            for pair in both:
                assert await pair.read_until(120) == frame(1) + frame(2) + frame(3)

            # Batched: even a connection's first frame waits for the flush, until
            # DIRECT_AFTER batches of one frame per connection have gone by.
            for n in range(4, 4 + DIRECT_AFTER):
                assert mode(flusher) == "batched"
                for writer in writers:
                    assert writer.put(frame(n))
                    assert writer.queued == 40
                flusher.flush()
            assert mode(flusher) == "direct"
            last = 4 + DIRECT_AFTER
            for writer in writers:
                assert writer.put(frame(last))
                assert writer.queued == 0
            flusher.flush()
            size = 40 * last
            for pair in both:
                assert await pair.read_until(size) == b"".join(frame(n) for n in range(1, last + 1))
            assert sum(counted) == 2 * size


async def test_small_batches_do_not_end_batching_for_a_big_room_early() -> None:
    with counted_flusher() as (flusher, _):
        async with pairs(4) as four:
            writers = [writer_for(pair, flusher) for pair in four]
            for writer in writers:
                writer.put(frame(1))
                writer.put(frame(2))
            flusher.flush()
            assert mode(flusher) == "batched"
            for n in range(DIRECT_AFTER * 4 - 1):  # one connection a batch (a pong, an ack)
                writers[n % 4].put(frame(3))
                flusher.flush()
                assert mode(flusher) == "batched"
            writers[0].put(frame(3))
            flusher.flush()
            assert mode(flusher) == "direct"


async def test_a_long_batch_right_after_another_means_a_busy_loop_and_queues() -> None:
    with counted_flusher(BUSY_BATCH) as (flusher, _):
        async with pairs(2) as both:
            writers = [writer_for(pair, flusher) for pair in both]
            await anyio.sleep(0.1)
            for writer in writers:  # after idling, a long fan-out keeps direct mode
                assert writer.put(frame(1))
                assert writer.queued == 0
            time.sleep(2 * BUSY_BATCH)
            flusher.flush()
            assert mode(flusher) == "direct"
            for writer in writers:  # at once again, but begun with no idle time before it
                assert writer.put(frame(2))
                assert writer.queued == 0
            time.sleep(2 * BUSY_BATCH)
            flusher.flush()
            assert mode(flusher) == "batched"
            for writer in writers:
                assert writer.put(frame(3))
                assert writer.queued == 40
            flusher.flush()
            for pair in both:
                assert await pair.read_until(120) == frame(1) + frame(2) + frame(3)


async def test_bytes_arrive_complete_and_in_order_whatever_the_mix_of_paths() -> None:
    rng = random.Random(14)
    with counted_flusher() as (flusher, _):
        async with pairs(4) as four:
            writers = [writer_for(pair, flusher) for pair in four]
            expected = [b""] * len(four)
            for n in range(400):
                index = rng.randrange(len(four))
                data = frame(n, rng.choice((1, 40, 3000)))
                assert writers[index].put(data)
                expected[index] += data
                if rng.random() < 0.3:
                    flusher.flush()
                if rng.random() < 0.05:
                    await anyio.sleep(0)
            flusher.flush()
            for pair, wanted in zip(four, expected, strict=True):
                assert await pair.read_until(len(wanted)) == wanted


async def test_the_limit_counts_what_the_transport_holds_when_frames_go_at_once() -> None:
    limit = 64 * 1024
    with counted_flusher() as (flusher, _):
        async with pairs(1, small_buffers=True) as (pair,):
            writer = writer_for(pair, flusher, limit)
            refused = None
            for n in range(10_000):  # far more than the kernel holds: the peer never reads
                before = writer.backlog()
                if not writer.put(frame(n, 1000)):
                    refused = n
                    assert writer.backlog() == before  # a refused frame queues nothing
                    break
                assert writer.backlog() <= limit
                flusher.flush()  # each frame its own batch: direct mode throughout
                assert flusher.direct
            assert refused is not None, "the byte limit never refused"
            assert writer.unsent() > limit - 1000  # the transport held the backlog
            assert writer.queued == 0


async def test_one_item_over_the_limit_is_taken_and_the_limit_covers_the_rest() -> None:
    limit = 64 * 1024
    with counted_flusher() as (flusher, _):
        async with pairs(1, small_buffers=True) as (pair,):
            writer = writer_for(pair, flusher, limit)
            history = b"h" * (4 * limit)  # far more than the kernel holds: the peer never reads
            assert writer.put(history)
            flusher.flush()
            assert writer.backlog() > limit
            assert not writer.put(history)  # one such item at a time
            taken = 0
            while writer.put(frame(taken, 1000)):
                taken += 1000
                flusher.flush()
            assert limit - 1000 < taken <= limit  # what follows it fits in the limit
            expected = history + b"".join(frame(n, 1000) for n in range(0, taken, 1000))
            with anyio.fail_after(10):
                while len(pair.read_now()) < len(expected) or writer.backlog():
                    await anyio.sleep(0.005)
            assert pair.received == expected
            assert writer.put(history)  # the first one has left: the next is taken


async def test_a_held_writer_writes_nothing_until_released() -> None:
    with counted_flusher() as (flusher, _):
        async with pairs(1) as (pair,):
            writer = TransportWriter(1 << 20, pair.transport, flusher)
            assert writer.put(frame(1))
            flusher.flush()
            assert writer.put(frame(2))
            await anyio.sleep(0.05)
            assert pair.read_now() == b""
            assert writer.queued == 80
            writer.release()
            flusher.flush()
            assert await pair.read_until(80) == frame(1) + frame(2)


async def test_a_closing_transport_takes_nothing_and_raises_nothing() -> None:
    with counted_flusher() as (flusher, counted):
        async with pairs(2) as (a, b):
            gone, live = writer_for(a, flusher), writer_for(b, flusher)
            a.transport.abort()
            await anyio.sleep(0.01)
            assert gone.put(frame(1))  # at once: dropped quietly
            assert live.put(frame(1))
            flusher.flush()
            assert await b.read_until(40) == frame(1)
            assert counted == [40]
