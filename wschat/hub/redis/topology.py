"""Where a room's commands and pub/sub go: one Redis, or a Redis Cluster.

A *shard* is one Redis server whose pub/sub connection carries some rooms'
events. With one Redis there is one shard and rooms use PUBLISH/SUBSCRIBE. On a
Cluster each master is a shard: a room's channel lives in its hash slot and
uses sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis >= 7.0), so a message travels
only to the shard that owns the room, and each node keeps one pub/sub
connection per master it has rooms on. redis-py's cluster client discovers the
masters and their slots and holds a connection pool per master; each command
runs on the master that owns its first key (:class:`ClusterCommands`), so a
master that is down or restarting fails its own rooms' commands and nobody
else's. (Through ``RedisCluster.execute_command`` a CLUSTERDOWN answer from a
restarting master resets the client's connections to every master, failing
commands in flight on the healthy ones.)

The backend's commands go through :class:`~.pipeline.Pipelines`, one
pipeline at a time per shard on a client of that shard (:meth:`client`); the
commands below (and :meth:`execute`) run one by one, for what runs before the
backend starts or after it stops.

Commands are never retried by redis-py: a publish whose reply was lost may
have run, so retrying it blindly could publish twice (a message with an id may
be retried: the backend returns the original position).
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..urls import shown_url
from .keys import channel

# Errors that mean "Redis cannot answer now" (the cluster client raises
# RedisClusterException, outside RedisError, when no node or slot answers).
FAILURES = (RedisError, RedisClusterException, OSError)
COMMAND_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
# redis-py's cluster client refuses (rather than waits) past this many
# connections to one node.
_CLUSTER_CONNECTIONS_PER_NODE = 1024
# One Redis: commands wait (up to COMMAND_TIMEOUT) for one of this many
# connections. redis-py's default pool refuses past 100 since 8.0 ("Too many
# connections"), and a busy node has hundreds of commands in flight; this many
# keeps within the descriptors the server reserves (server/descriptors.py).
POOL_CONNECTIONS = 48
CLUSTER_SCHEME = "redis-cluster"
# After a connection failure the slot map is read again, at most this often
# (a failover moves slots to a replica).
_REFRESH_INTERVAL = 1.0


def _client_options() -> dict[str, Any]:
    return {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
    }


class SingleRedis:
    """One Redis server (or a primary with replicas behind one address): one shard.

    Args:
        url: ``redis://[user:password@]host:port/db`` or ``rediss://...``.
    """

    sharded = False
    publish_command = "PUBLISH"

    def __init__(self, url: str) -> None:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=POOL_CONNECTIONS, timeout=COMMAND_TIMEOUT, **_client_options()
        )
        self.commands: Redis = Redis.from_pool(pool)

    async def connect(self) -> None:
        """Check that Redis answers."""
        await self.commands.ping()

    def shard_of(self, room: str) -> str:
        """Every room is on the one shard."""
        return ""

    def shard_of_key(self, key: str) -> str:
        """Every key is on the one shard."""
        return ""

    def client(self, shard: str) -> Redis:
        """The client whose connections carry the shard's pipelines."""
        return self.commands

    async def execute(self, key: str, *args: Any) -> Any:
        """Run one command on its own (no pipeline)."""
        return await self.commands.execute_command(*args)  # type: ignore[no-untyped-call, unused-ignore]

    async def failed(self) -> None:
        """Nothing to learn after a failure: there is one server."""

    def pubsub(self, shard: str) -> PubSub:
        """A new pub/sub connection (not yet connected) to the server."""
        return self.commands.pubsub()

    async def publish(self, name: str, data: bytes) -> None:
        """PUBLISH ``data`` on channel ``name``."""
        await self.commands.publish(name, data)

    async def scan(self, pattern: str) -> list[bytes]:
        """Every key matching ``pattern`` (SCAN: the server is never blocked for long)."""
        return [key async for key in self.commands.scan_iter(match=pattern, count=1000)]

    async def refresh(self) -> None:
        """Nothing moves on one server."""

    def where(self, shard: str = "") -> str:
        """The server's address, for logs."""
        kwargs = self.commands.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    async def aclose(self) -> None:
        """Close every connection."""
        await self.commands.aclose()


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``redis-cluster://[user:password@]host:port[,host:port...]`` -> (nodes, auth options).

    Raises:
        ValueError: The URL is not of that form.
    """
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        raise ValueError(f"not a {CLUSTER_SCHEME}:// URL: {shown_url(url)!r}")
    if parts.path not in ("", "/", "/0") or parts.query or parts.fragment:
        raise ValueError("a Redis Cluster URL has no database, query or fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    auth: dict[str, Any] = {}
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        if user:
            auth["username"] = unquote(user)
        if has_password:
            auth["password"] = unquote(password)
    nodes = []
    for address in hosts.split(","):
        host, colon, port = address.rpartition(":")
        if not colon:
            host, port = address, "6379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{address!r} is not host:port")
        nodes.append((host, int(port)))
    return nodes, auth


class ClusterCommands:
    """The commands the backend sends, each to the master owning its first key.

    A MOVED answer (the command did not run) reads the slot map again and
    tries once more on the new owner; every other error is raised as it is.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._refreshed_at = -_REFRESH_INTERVAL

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        """EVALSHA on the owner of the first key."""
        return await self.run(keys_and_args[0], "EVALSHA", sha, numkeys, *keys_and_args)

    async def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        """EVAL on the owner of the first key."""
        return await self.run(keys_and_args[0], "EVAL", script, numkeys, *keys_and_args)

    async def hmget(self, key: str, fields: list[str]) -> Any:
        """HMGET on the owner of ``key``."""
        return await self.run(key, "HMGET", key, *fields)

    async def spublish(self, name: str, data: bytes) -> Any:
        """SPUBLISH on the owner of shard channel ``name``."""
        return await self.run(name, "SPUBLISH", name, data)

    async def run(self, key: str, *args: Any) -> Any:
        """Run a command on the owner of ``key``."""
        node = self._cluster.get_node_from_key(key)
        assert node is not None
        try:
            return await node.execute_command(*args)
        except MovedError:
            await self.refresh()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self.failed()
            raise
        node = self._cluster.get_node_from_key(key)
        assert node is not None
        return await node.execute_command(*args)

    async def failed(self) -> None:
        """A master did not answer: read the slot map again (at most once a second)."""
        if anyio.current_time() - self._refreshed_at >= _REFRESH_INTERVAL:
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                await self.refresh()

    async def refresh(self) -> None:
        """Read the slot map again (after a failover or a slot migration)."""
        self._refreshed_at = anyio.current_time()
        await self._cluster.nodes_manager.initialize()


class ClusterRedis:
    """A Redis Cluster: one shard per master.

    Args:
        url: ``redis-cluster://[user:password@]host:port[,host:port...]`` (any
            reachable nodes; the rest are discovered).
    """

    sharded = True
    publish_command = "SPUBLISH"

    def __init__(self, url: str) -> None:
        nodes, self._auth = parse_cluster_url(url)
        self.cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            require_full_coverage=False,
            max_connections=_CLUSTER_CONNECTIONS_PER_NODE,
            **self._auth,
            **_client_options(),
        )
        self.commands = ClusterCommands(self.cluster)
        self._clients: dict[str, Redis] = {}

    async def connect(self) -> None:
        """Discover the masters and their slots."""
        await self.cluster.initialize()

    def shard_of(self, room: str) -> str:
        """The name (``host:port``) of the master that owns ``room``'s slot.

        Raises:
            RedisError: No master covers the slot.
        """
        node = self.cluster.get_node_from_key(channel(room))
        assert node is not None
        name: str = node.name
        return name

    async def publish(self, name: str, data: bytes) -> None:
        """SPUBLISH ``data`` on shard channel ``name`` (on the master that owns it)."""
        await self.commands.spublish(name, data)

    def shard_of_key(self, key: str) -> str:
        """The name of the master that owns ``key``'s slot.

        Raises:
            RedisClusterException: No master covers the slot.
        """
        node = self.cluster.get_node_from_key(key)
        assert node is not None
        name: str = node.name
        return name

    def client(self, shard: str) -> Redis:
        """A client of master ``shard`` alone: its pipelines and its pub/sub connection."""
        client = self._clients.get(shard)
        if client is None:
            host, _, port = shard.rpartition(":")
            client = self._clients[shard] = Redis(
                host=host, port=int(port), **self._auth, **_client_options()
            )
        return client

    async def execute(self, key: str, *args: Any) -> Any:
        """Run one command on its own (no pipeline) on the owner of ``key``."""
        return await self.commands.run(key, *args)

    async def failed(self) -> None:
        """A master did not answer: read the slot map again (at most once a second)."""
        await self.commands.failed()

    def pubsub(self, shard: str) -> PubSub:
        """A new pub/sub connection (not yet connected) to master ``shard``."""
        return self.client(shard).pubsub()

    async def scan(self, pattern: str) -> list[bytes]:
        """Every key matching ``pattern`` on every master (SCAN on each)."""
        return [key async for key in self.cluster.scan_iter(match=pattern, count=1000)]

    async def refresh(self) -> None:
        """Read the slot map again (after a failover or a slot migration)."""
        await self.commands.refresh()

    def where(self, shard: str = "") -> str:
        """A shard's address (or the startup nodes'), for logs."""
        if shard:
            return shard
        return ",".join(self.cluster.nodes_manager.startup_nodes)

    async def aclose(self) -> None:
        """Close every connection."""
        for client in self._clients.values():
            await client.aclose()
        await self.cluster.aclose()


Topology = SingleRedis | ClusterRedis
