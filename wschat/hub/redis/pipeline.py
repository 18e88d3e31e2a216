"""Every command to Redis in pipelines: one round trip carries all that queued meanwhile.

Theory of operation
-------------------
A command is queued on its shard (the one Redis, or the Cluster master that
owns its key's slot) and never waits for another command's reply before it is
queued. Each shard has one task that sends what its queue holds (up to
:data:`MAX_BATCH` commands) as one pipeline (``transaction=False``: the
commands are not wrapped in MULTI; each script is atomic on its own), reads the
replies, hands each to its command, and sends what queued meanwhile. One
pipeline at a time per shard, on the shard task's own connection (packed by
hiredis, written at once), so Redis runs a shard's
commands in the order they were queued: a sender's messages get consecutive
seqs in the order it sent them, and commands of different rooms share a round
trip. Hundreds of joins or publishes cost a few round trips instead of one
each on a pool of connections.

Failures are per command, as before: a reply that is an error goes to its
command alone; a pipeline whose connection fails (or times out) fails every
command in it (they may have run: a publish with an id may be retried, the
script deduplicates it). Two answers are handled here, once per command, as
they mean the command did not run:

- NOSCRIPT (a Redis that restarted or never ran the script): sent again at the
  head of the queue as EVAL with the script's text, which also caches it.
- MOVED (a Cluster slot that moved): the slot map is read again and the
  command queued at the head of its new owner's queue.

Both keep a room's order unless the answer changes in the middle of a
pipeline: another client loading the script (or the slot finishing its move)
between two of its commands lets the later one run first. Seqs stay unique and
gap-free either way (Redis assigns them).

Before the backend starts and after it stops (the goodbye that removes this
node's presence), commands run one by one on the topology's clients.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from redis.asyncio.connection import AbstractConnection as Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import scripts
from .topology import COMMAND_TIMEOUT, FAILURES, Topology

_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - the redis extra installs hiredis
    _pack_command = None

logger = logging.getLogger("wschat.hub.redis")

# A pipeline carries at most this many commands: a round trip's replies stay a
# few hundred KiB, and the first command's caller does not wait for thousands.
# (redis-py's own docs batch pipelines by the thousand; Redis reads a client's
# query buffer up to 1 GiB, so the bound is latency, not Redis.)
MAX_BATCH = 1000

Done = Callable[[Any], None]
"""Called once with a command's reply, or with the exception that is its answer."""


class Command:
    """One command waiting for (or in) a pipeline."""

    __slots__ = ("args", "done", "key", "moved", "reloaded")

    def __init__(self, key: str, args: tuple[Any, ...], done: Done) -> None:
        self.key = key
        self.args = args
        self.done = done
        # Each retry happens once per command: sent again as EVAL after NOSCRIPT
        # (reloaded), sent to the slot's new owner after MOVED (moved). A moved
        # EVALSHA may then meet NOSCRIPT on its new shard, and be reloaded there.
        self.reloaded = False
        self.moved = False


class Shard:
    """One shard's queue, the task that sends it and the connection it sends on."""

    __slots__ = ("connection", "name", "queue", "wakeup")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: deque[Command] = deque()
        self.wakeup: anyio.Event | None = None
        self.connection: Connection | None = None


class Pipelines:
    """Runs the backend's commands in one pipeline per round trip per shard.

    Offers the commands :mod:`.scripts` and the backend send (``evalsha``,
    ``eval``, ``hmget``, ``publish``), routed by their first key.

    Args:
        topology: One Redis or a Cluster.
    """

    def __init__(self, topology: Topology, timeout: float = COMMAND_TIMEOUT) -> None:
        self.topology = topology
        self.timeout = timeout
        """Seconds a round trip may take before its connection is given up."""
        self._shards: dict[str, Shard] = {}
        self._group: TaskGroup | None = None
        self.pipelines = 0
        """Pipelines sent (for tests and statistics)."""
        self.commands = 0
        """Commands sent in them."""

    def start(self, group: TaskGroup) -> None:
        """Send pipelines from tasks in ``group`` from now on."""
        self._group = group

    def stop(self) -> None:
        """Fail what is queued; from now on commands run one by one (call once stopped)."""
        self._group = None
        shards, self._shards = self._shards, {}
        for shard in shards.values():
            _fail(shard.queue, RedisConnectionError("the Redis backend stopped"))

    # -- queueing ------------------------------------------------------------------

    def submit(self, key: str, args: tuple[Any, ...], done: Done) -> None:
        """Queue ``args`` (a command) for the shard owning ``key``; never blocks.

        ``done`` is called once with the reply or an exception: later, from the
        shard's task, or now when no shard owns the key.
        """
        if self._group is None:
            done(RedisConnectionError("the Redis backend is not running"))
            return
        try:
            name = self.topology.shard_of_key(key)
        except FAILURES as exc:
            done(exc)
            return
        self._queue(name, Command(key, args, done), front=False)

    async def execute(self, key: str, *args: Any) -> Any:
        """Run a command in the next pipeline of ``key``'s shard and return its reply.

        Raises:
            RedisError: Its answer was an error, or the shard did not answer.
        """
        if self._group is None:
            return await self.topology.execute(key, *args)
        finished = anyio.Event()
        answer: list[Any] = []

        def done(reply: Any) -> None:
            answer.append(reply)
            finished.set()

        self.submit(key, args, done)
        await finished.wait()
        reply = answer.pop()
        if isinstance(reply, Exception):
            try:
                raise reply
            finally:
                del reply  # else its traceback holds this frame, which holds it: a cycle
        return reply

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        """EVALSHA on the shard owning the first key."""
        return await self.execute(keys_and_args[0], "EVALSHA", sha, numkeys, *keys_and_args)

    async def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        """EVAL on the shard owning the first key."""
        return await self.execute(keys_and_args[0], "EVAL", script, numkeys, *keys_and_args)

    async def hmget(self, key: str, fields: list[str]) -> Any:
        """HMGET on the shard owning ``key``."""
        return await self.execute(key, "HMGET", key, *fields)

    async def publish(self, name: str, data: bytes) -> Any:
        """PUBLISH (SPUBLISH on a Cluster) on the shard owning channel ``name``."""
        return await self.execute(name, self.topology.publish_command, name, data)

    def _queue(self, name: str, command: Command, front: bool) -> None:
        shard = self._shards.get(name)
        if shard is None:
            shard = self._shards[name] = Shard(name)
            assert self._group is not None
            self._group.start_soon(self._run, shard, name=f"wschat redis pipeline {name or 'main'}")
        if front:
            shard.queue.appendleft(command)
        else:
            shard.queue.append(command)
        wakeup = shard.wakeup
        if wakeup is not None:
            shard.wakeup = None
            wakeup.set()

    # -- sending -------------------------------------------------------------------

    async def _run(self, shard: Shard) -> None:
        queue = shard.queue
        batch: list[Command] = []
        try:
            while True:
                if not queue:
                    shard.wakeup = anyio.Event()
                    await shard.wakeup.wait()
                    continue
                count = min(len(queue), MAX_BATCH)
                batch = [queue.popleft() for _ in range(count)]
                try:
                    await self._send(shard, batch)
                except Exception as exc:  # a bug must not stop the shard's pipelines
                    logger.exception("a Redis pipeline failed")
                    _fail(batch, RedisConnectionError(f"the pipeline failed: {exc!r}"))
                batch = []
        finally:
            # Cancelled (the backend stops): nothing waits forever for a reply.
            closed = RedisConnectionError("the Redis backend stopped")
            _fail(batch, closed)
            if self._shards.get(shard.name) is shard:
                del self._shards[shard.name]
            _fail(queue, closed)
            if shard.connection is not None:
                with anyio.CancelScope(shield=True):
                    await shard.connection.disconnect()

    async def _send(self, shard: Shard, batch: list[Command]) -> None:
        self.pipelines += 1
        self.commands += len(batch)
        try:
            replies = await self._round_trip(shard, batch)
        except FAILURES as exc:
            logger.debug("pipeline to %s failed: %s", self.topology.where(shard.name), exc)
            _fail(batch, exc)
            await self.topology.failed()
            return
        pending = list(zip(batch, replies, strict=True))
        batch.clear()  # answered from here on, whatever happens (see the except)
        again: list[Command] = []
        sorted_out = 0  # commands of ``pending`` answered or in ``again``
        try:
            moved = False
            for command, reply in pending:
                if _retry(command, reply):
                    again.append(command)
                    moved = moved or isinstance(reply, MovedError)
                else:
                    _answer(command, reply)
                sorted_out += 1
            if moved:
                try:
                    await self.topology.refresh()
                except FAILURES as exc:
                    logger.debug("cluster topology refresh failed: %s", exc)
            while again:  # last first, each to the front: they go in their order
                command = again[-1]
                try:
                    name = self.topology.shard_of_key(command.key)
                except FAILURES as exc:
                    _answer(command, exc)
                else:
                    self._queue(name, command, front=True)
                again.pop()
        except BaseException as exc:  # cancelled, or a bug: nothing is left unanswered
            left = [command for command, _ in pending[sorted_out:]] + again
            stopped = isinstance(exc, anyio.get_cancelled_exc_class())
            reason = "the Redis backend stopped" if stopped else f"the pipeline failed: {exc!r}"
            _fail(left, RedisConnectionError(reason))
            raise

    async def _round_trip(self, shard: Shard, batch: list[Command]) -> list[Any]:
        """Send ``batch`` as one write on the shard's connection; its replies, in order.

        The shard's task is the connection's only user (one pipeline at a time),
        so it keeps the connection instead of taking one from the pool per round
        trip, and packs the commands itself: redis-py's pipeline packs each
        argument in Python (about 20 µs for a publish, hiredis 2 µs) and has
        per-call work a pipeline of plain commands does not need. An error reply
        answers its command alone; a failure (or a cancellation) mid-way drops
        the connection, whose replies would be out of step, and raises.
        """
        connection = shard.connection
        if connection is None:
            pool = self.topology.client(shard.name).connection_pool
            connection = shard.connection = pool.make_connection()  # type: ignore[no-untyped-call, unused-ignore]
            # The round trip has a deadline of its own (below): with a socket
            # timeout redis-py runs every send in a task of its own (wait_for).
            connection.socket_timeout = None
        replies: list[Any] = []
        try:
            with anyio.fail_after(self.timeout):
                await connection.send_packed_command(_pack(connection, batch), check_health=False)
                for _ in batch:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as exc:
                        # Without its traceback: that holds this frame, whose
                        # ``replies`` holds the error, a cycle only a full
                        # collection would free.
                        replies.append(exc.with_traceback(None))
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await connection.disconnect()
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(
                    f"Redis did not answer a pipeline within {self.timeout:g} s"
                ) from None
            raise
        return replies


def _pack(connection: Connection, batch: list[Command]) -> bytes | list[bytes]:
    pack = _pack_command
    if pack is None:  # hiredis not installed: redis-py's own packing
        return connection.pack_commands([command.args for command in batch])
    return b"".join([pack(command.args) for command in batch])


def _retry(command: Command, reply: Any) -> bool:
    """Whether ``command`` goes again (made ready for it): as EVAL after NOSCRIPT,
    to the slot's new owner after MOVED; each once."""
    if isinstance(reply, NoScriptError) and not command.reloaded:
        script = scripts.BY_SHA.get(command.args[1])
        if script is not None and command.args[0] == "EVALSHA":
            command.args = ("EVAL", script.text, *command.args[2:])
            command.reloaded = True
            return True
    elif isinstance(reply, MovedError) and not command.moved:
        command.moved = True
        return True
    return False


def _answer(command: Command, reply: Any) -> None:
    try:
        command.done(reply)
    except Exception:  # a caller's bug must not stop the shard's pipelines
        logger.exception("handling a Redis reply failed")


def _fail(commands: deque[Command] | list[Command], exc: Exception) -> None:
    """Answer every command in ``commands`` with ``exc`` and empty it."""
    failed = list(commands)
    commands.clear()
    for command in failed:
        _answer(command, exc)
