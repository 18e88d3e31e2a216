"""micro.py's inbound benchmarks: one client message through the server, without its deliveries.

(And, for ``--callgrind`` only, the fan-out per recipient: ``fanout_*``.)

``bench_inbound`` times the whole per-message path and its stages;
``loops``/``callgrind`` count instructions per operation under valgrind
(``micro.py --callgrind [OP ...]``), a figure the shared machine's load does not move.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from micro import (
    ROOM,
    FakeMember,
    _real_members,
    masked,
    open_server_connection,
    text_message,
)
from wsproto import ConnectionType
from wsproto import connection as ws

from wschat.chat import ChatSession, Position, format_time, message_event, parse_command
from wschat.hub import Hub, MemoryBackend


class _CTransport:
    """A transport whose methods are C callables: only wschat's own Python is counted."""

    __slots__ = ("write",)

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write

    get_write_buffer_size = staticmethod(int)  # int() is 0
    is_closing = staticmethod(bool)  # bool() is False


MICRO = str(Path(__file__).resolve().parent / "micro.py")


async def _inbound_setup(rng: random.Random, rate: float) -> tuple[Any, Any, Any, Any]:
    """A chat Peer (its AppSession too) in room ``bench`` with one fake member beside it,
    and the ChatDispatch that carries its frames out: the server's per-message path."""
    from wschat.app import Admission, App
    from wschat.server.config import ServerConfig
    from wschat.server.dispatch import ChatDispatch
    from wschat.server.metrics import Metrics

    config = ServerConfig(
        rate=rate, burst=10**9, address_rate=rate, address_burst=10**9, user_rate=rate
    )
    hub = Hub(MemoryBackend())
    app = App(config, hub=hub)
    metrics = Metrics(hub.statistics)
    dispatch = ChatDispatch(app, hub, config, metrics)
    (peer,) = await _real_members(1)
    peer.session = ChatSession(ROOM)
    peer.limits.client_key = "127.0.0.1"
    peer.limits.messages.rate = peer.limits.strikes.rate = rate
    peer.limits.messages.burst = peer.limits.messages._tokens = 10**9
    peer.app_session = app.open_session(peer.session, Admission(None), time.time())
    other = FakeMember(0)
    return hub, dispatch, peer, other


def bench_inbound(rng: random.Random, number: int, repeat: int) -> dict[str, float]:
    """One client message through the server's inbound path, without its deliveries.

    The frame a load client sends (seed format, 100 characters, masked) goes
    through ``ServerConnection.receive_data`` / ``events_received``, the
    ``messages_in`` counter and ``ChatDispatch.on_text`` (rate limits, AppSession,
    ChatSession, Hub.say, MemoryBackend.publish, one delivery to a fake member),
    as ``ConnectionPump._read_loop`` does, and the sender's own copy is dropped.
    Also each stage alone (after the whole, so caches are warm alike).
    """
    text = text_message(rng)
    client_message = b'{"username":"s1","message":"%s"}' % text.encode()
    frames = [masked(client_message, rng) for _ in range(64)]
    message_text = client_message.decode()
    results: dict[str, float] = {}

    async def run(rate: float) -> dict[str, float]:
        hub, dispatch, peer, other = await _inbound_setup(rng, rate)
        async with anyio.create_task_group() as group:
            await hub.start(group)
            await hub.enter(peer, ROOM)
            await hub.enter(other, ROOM)
            conn = peer.conn
            messages_in = dispatch.metrics.messages_in
            on_text = dispatch.on_text
            timings: dict[str, list[float]] = {"whole": [], "on_text": [], "say": []}
            for _ in range(repeat):
                started = time.perf_counter()
                for i in range(number):
                    conn.receive_data(frames[i & 63])
                    for event in conn.events_received():
                        messages_in.inc()
                        await on_text(peer, event.text)
                    peer.writer.discard()
                    other.box.clear()
                timings["whole"].append((time.perf_counter() - started) / number)
                started = time.perf_counter()
                for _ in range(number):
                    await on_text(peer, message_text)
                    peer.writer.discard()
                    other.box.clear()
                timings["on_text"].append((time.perf_counter() - started) / number)
                started = time.perf_counter()
                for _ in range(number):
                    await hub.say(ROOM, "s1", text)
                    peer.writer.discard()
                    other.box.clear()
                timings["say"].append((time.perf_counter() - started) / number)
            await hub.aclose()
            group.cancel_scope.cancel()
        return {name: min(values) for name, values in timings.items()}

    for label, rate in (("rate limits off", 0.0), ("rate limits on", 1e9)):
        figures = anyio.run(run, rate)
        results[f"inbound: whole message, frame to publish ({label})"] = figures["whole"]
        results[f"inbound: ChatDispatch.on_text ({label})"] = figures["on_text"]
    results["inbound: Hub.say (format_time, publish, 2-member _deliver)"] = figures["say"]
    return results


# -- callgrind: instructions per operation (noise-free on a shared machine) ------


def loops(rng: random.Random) -> dict[str, Callable[[int], None]]:
    """Operations for ``--callgrind``: each runs its operation ``n`` times after its setup."""
    text = text_message(rng)
    seed = f'{{"username":"s1","message":"{text}"}}'
    client_message = seed.encode()
    frames = [masked(client_message, rng) for _ in range(64)]
    position = Position("0123456789ab", 41)

    def sync(fn: Callable[[], object]) -> Callable[[int], None]:
        def loop(n: int) -> None:
            for _ in range(n):
                fn()

        return loop

    def decode(n: int) -> None:
        conn = open_server_connection(rng)
        for i in range(n):
            conn.receive_data(frames[i & 63])
            conn.events_received()

    def decode_wsproto(n: int) -> None:
        bare = ws.Connection(ConnectionType.SERVER)
        for i in range(n):
            bare.receive_data(frames[i & 63])
            for _ in bare.events():
                pass

    session = ChatSession(ROOM)
    session.handle(seed)

    def inbound(rate: float, stage: str) -> Callable[[int], None]:
        def loop(n: int) -> None:
            async def run() -> None:
                hub, dispatch, peer, other = await _inbound_setup(rng, rate)
                async with anyio.create_task_group() as group:
                    await hub.start(group)
                    await hub.enter(peer, ROOM)
                    await hub.enter(other, ROOM)
                    conn, messages_in = peer.conn, dispatch.metrics.messages_in
                    for i in range(n):
                        if stage == "whole":
                            conn.receive_data(frames[i & 63])
                            for event in conn.events_received():
                                messages_in.inc()
                                await dispatch.on_text(peer, event.text)
                        elif stage == "on_text":
                            await dispatch.on_text(peer, seed)
                        else:
                            await hub.say(ROOM, "s1", text)
                        peer.writer.discard()
                        other.box.clear()
                    await hub.aclose()
                    group.cancel_scope.cancel()

            anyio.run(run)

        return loop

    def fanout(recipients: int, direct: bool) -> Callable[[int], None]:
        # One fan-out to ``recipients`` real Peers per operation, then the flush
        # that ends its batch: written at once (direct mode: a big room at a low
        # message rate) or queued and flushed joined (batched). Instructions per
        # recipient: the difference of two room sizes over the difference in size.
        def loop(n: int) -> None:
            anyio.run(run, n)

        async def run(n: int) -> None:
            members = await _real_members(recipients)
            sink: deque[bytes] = deque(maxlen=0)
            for member in members:
                member.writer._transport = _CTransport(sink.append)
            flusher = members[0].writer._flusher
            flusher._busy_batch = float("inf")  # valgrind's slowness is no busy loop
            hub = Hub(MemoryBackend())
            async with anyio.create_task_group() as group:
                await hub.start(group)
                for member in members:
                    await hub.enter(member, ROOM)
                for _ in range(n):
                    flusher.direct = direct
                    await hub.say(ROOM, "s1", text)
                    flusher.flush()
                await hub.aclose()
                group.cancel_scope.cancel()

        return loop

    return {
        "decode": decode,
        "decode_wsproto": decode_wsproto,
        "parse_command": sync(lambda: parse_command(seed)),
        "handle": sync(lambda: session.handle(seed)),
        "format_time": sync(lambda: format_time(1_795_000_000.123)),
        "message_event": sync(
            lambda: message_event(ROOM, position, "s1", text, "2026-11-26T16:00:00.123Z")
        ),
        "say": inbound(0.0, "say"),
        "on_text": inbound(0.0, "on_text"),
        "on_text_limited": inbound(1e9, "on_text"),
        "whole": inbound(0.0, "whole"),
        "whole_limited": inbound(1e9, "whole"),
        **{
            f"fanout_{mode}_{size}": fanout(size, mode == "direct")
            for mode in ("direct", "batched")
            for size in (50, 500)
        },
    }


def instructions(name: str, n: int) -> int:
    """Instructions callgrind counts for a process that runs loop ``name`` ``n`` times."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                *(sys.executable, MICRO, "--loop", name, "--number", str(n)),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no totals in callgrind output")


WARM_UP = 100  # operations run before counting (see main)


def callgrind(names: list[str], n: int) -> dict[str, float]:
    """Instructions per operation: (Ir with ``n`` operations - Ir with none) / ``n``."""
    return {name: (instructions(name, n) - instructions(name, 0)) / n for name in names}
