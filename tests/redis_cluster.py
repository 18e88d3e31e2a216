"""A real three-master Redis Cluster for the tests, on free loopback ports.

``redis-server --cluster-enabled yes`` three times, each in its own temporary
directory (its ``nodes.conf`` survives a restart, so a killed master comes back
as the same node with the same slots, but empty: nothing is persisted), then
``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``.

``cluster-require-full-coverage no`` keeps the other masters serving while one
is down (with the default, the whole cluster refuses commands once a slot is
uncovered); the how-to says so too.

Creating a cluster takes ~3 s (``redis-cli`` waits for the nodes to join), so
one cluster serves the whole test session: the module-scoped ``redis_cluster``
fixture hands out the shared one (flushed, every master up) and it is stopped
when the session ends.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.crc import key_slot

from wschat.hub.redis import channel

from .helpers import RedisProcess, free_port, require, wait_for_port

# A restarted master waits this long (at least 500 ms) before it serves again.
NODE_TIMEOUT_MS = 1000
READY_TIMEOUT = 15.0


class ClusterNode:
    """One master: a ``redis-server`` in cluster mode, restartable on the same port."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.bus_port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.slots: list[tuple[int, int]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, ready: bool = True) -> None:
        """Start (or restart) the node; returns once it serves (or, without
        ``ready``, accepts connections: before the cluster is created)."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--cluster-port",
                str(self.bus_port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--cluster-require-full-coverage",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        if ready:
            self.wait_ready()

    def stop(self, kill: bool = False) -> None:
        """Stop the node (SIGKILL with ``kill``); its data is lost."""
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the node says the cluster is ok (a restarted master waits a little)."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                try:
                    if client.execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") >= 0:
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cluster node {self.address} not ready in {timeout}s")
                time.sleep(0.05)


class RedisClusterProcess:
    """Three masters, no replicas, every slot covered."""

    def __init__(self, masters: int = 3) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        require(server is not None, "redis-server")
        require(cli is not None, "redis-cli")
        assert server is not None and cli is not None
        self.cli = cli
        self._tmp = tempfile.TemporaryDirectory(prefix="wschat-cluster-")
        root = Path(self._tmp.name)
        self.nodes = []
        for index in range(masters):
            (root / str(index)).mkdir()
            self.nodes.append(ClusterNode(server, root / str(index)))

    @property
    def url(self) -> str:
        return "redis-cluster://" + ",".join(node.address for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start(ready=False)
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        for node in self.nodes:
            node.wait_ready()
        self._read_slots()

    def _read_slots(self) -> None:
        with self.nodes[0].client() as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        by_port = {node.port: node for node in self.nodes}
        for node in self.nodes:
            node.slots = []
        for entry in ranges:
            start, end, master = entry[0], entry[1], entry[2]
            by_port[int(master[1])].slots.append((int(start), int(end)))

    def owner(self, room: str) -> ClusterNode:
        """The master whose slots hold ``room``."""
        return self.owner_of_slot(key_slot(channel(room).encode()))

    def owner_of_slot(self, slot: int) -> ClusterNode:
        """The master that holds ``slot``."""
        for node in self.nodes:
            if any(start <= slot <= end for start, end in node.slots):
                return node
        raise LookupError(f"no master owns slot {slot}")

    def move_slot(self, slot: int, target: ClusterNode) -> None:
        """Migrate ``slot`` and its keys to ``target`` as a reshard does (IMPORTING,
        MIGRATING, MIGRATE, then SETSLOT NODE on every master, the target first)."""
        source = self.owner_of_slot(slot)
        with target.client() as to, source.client() as frm:
            target_id = to.execute_command("CLUSTER", "MYID")
            to.execute_command(
                "CLUSTER", "SETSLOT", slot, "IMPORTING", frm.execute_command("CLUSTER", "MYID")
            )
            frm.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := frm.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                frm.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in sorted(self.nodes, key=lambda n: n is not target):
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self._read_slots()

    def rooms_on_every_shard(self, per_shard: int = 1, prefix: str = "room") -> list[str]:
        """Room names, ``per_shard`` of them owned by each master, in master order."""
        found: dict[int, list[str]] = {node.port: [] for node in self.nodes}
        index = 0
        while any(len(rooms) < per_shard for rooms in found.values()):
            room = f"{prefix}{index}"
            rooms = found[self.owner(room).port]
            if len(rooms) < per_shard:
                rooms.append(room)
            index += 1
        return [room for node in self.nodes for room in found[node.port]]

    def healthy(self) -> None:
        """Every master running, ready, and empty."""
        for node in self.nodes:
            if not node.running:
                node.start()
        for node in self.nodes:
            node.wait_ready()
            with node.client() as client:
                client.flushall()
                client.execute_command("ACL", "SETUSER", "default", "+@all")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self._tmp.cleanup()


_shared: RedisClusterProcess | None = None


def shared_cluster() -> RedisClusterProcess:
    """The session's cluster, started on first use and stopped at exit."""
    global _shared
    if _shared is None:
        cluster = RedisClusterProcess()
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        _shared = cluster
        atexit.register(cluster.stop)
    return _shared


@pytest.fixture(name="redis_cluster", scope="module")
def redis_cluster_fixture() -> Iterator[RedisClusterProcess]:
    """The shared three-master cluster, every master up and flushed."""
    cluster = shared_cluster()
    cluster.healthy()
    yield cluster


class Server(Protocol):
    """A Redis server a test can stop (losing its data) and start again."""

    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Deployment:
    """One Redis or the Cluster, as the Redis tests see it.

    Args:
        url: The backend URL.
        servers: Every server (one, or the masters).
        owner: The server that holds a room.
    """

    def __init__(self, kind: str, url: str, servers: list[Server], owner: Callable[[str], Server]):
        self.kind = kind
        self.url = url
        self.servers = servers
        self.owner = owner

    def admin(self, room: str = "lobby") -> AsyncRedis:
        """A client of the server that holds ``room`` (close it with ``aclose``)."""
        return AsyncRedis(host="127.0.0.1", port=self.owner(room).port)

    async def key_count(self) -> int:
        total = 0
        for server in self.servers:
            async with AsyncRedis(host="127.0.0.1", port=server.port) as client:
                total += await client.dbsize()
        return total

    async def keys_without_ttl(self) -> list[bytes]:
        found = []
        for server in self.servers:
            async with AsyncRedis(host="127.0.0.1", port=server.port) as client:
                async for key in client.scan_iter(count=1000):
                    if await client.pttl(key) < 0:
                        found.append(key)
        return found


@contextmanager
def pubsub_outage(deployment: Deployment, room: str = "lobby") -> Iterator[None]:
    """Drop every pub/sub connection to ``room``'s server and refuse new subscriptions.

    Commands keep working: only the nodes' live delivery is down, until the end
    of the block (then they resubscribe within their reconnect backoff, <= 1 s).
    """
    with redis.Redis(host="127.0.0.1", port=deployment.owner(room).port) as admin:
        admin.execute_command("ACL", "SETUSER", "default", "-subscribe", "-ssubscribe")
        admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        try:
            yield
        finally:
            admin.execute_command("ACL", "SETUSER", "default", "+@all")


@pytest.fixture(
    name="deployment",
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ],
)
def deployment_fixture(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """A private Redis (restartable), then the shared Cluster (flushed, all masters up)."""
    if request.param == "redis":
        with RedisProcess() as process:
            yield Deployment("redis", process.url, [process], lambda room: process)
    else:
        cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
        cluster.healthy()
        yield Deployment("cluster", cluster.url, list(cluster.nodes), cluster.owner)
