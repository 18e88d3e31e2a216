"""Rate limiting: token buckets with an injected clock, per connection and per key.

:class:`TokenBucket` limits one connection. A client that reconnects gets a
fresh bucket each time, so limits that must hold across connections (messages
per client address, new connections per client address, later per identity)
use :class:`KeyedRateLimiter`: a table of buckets keyed by address (or any
string), bounded by least-recently-used eviction.

Theory of the table: a bucket that has refilled to ``burst`` is the same as no
bucket at all (a new key starts full), so such entries are dropped as the
table is used, oldest first, and the table holds only keys that were active
within the last ``burst / rate`` seconds. Only when more keys than
``max_keys`` are active at once does eviction forget a bucket that was not
full, which loosens the limit for that key: :meth:`KeyedRateLimiter.statistics`
counts those evictions so an operator can see it and raise the size.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TokenBucket:
    """Allows ``rate`` events per second on average and ``burst`` at once.

    Args:
        rate: Tokens added per second; 0 disables the limit.
        burst: Bucket capacity.
        now: The current time (monotonic seconds).
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token; False when the bucket is empty (the event is over the limit)."""
        if self.rate <= 0:
            return True
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after(self, now: float) -> float:
        """Seconds until :meth:`take` can succeed (0 when it can now)."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate)

    def full(self, now: float) -> bool:
        """True when the bucket has refilled to ``burst`` (it is as good as a new one)."""
        return self._tokens + (now - self._stamp) * self.rate >= self.burst

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now


# Full buckets dropped per call at most: constant work per event, while the
# table still shrinks faster than one call can grow it.
_DROP_PER_CALL = 2


class KeyedRateLimiter:
    """One token bucket per key (e.g. a client address), at most ``max_keys`` of them.

    Args:
        rate: Events per second allowed per key; 0 disables the limit (every
            :meth:`take` succeeds and nothing is stored).
        burst: Events a key may spend at once.
        max_keys: Buckets kept at most; beyond it the least recently used is
            forgotten.
    """

    __slots__ = ("_buckets", "_evicted", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._evicted = 0

    @property
    def enabled(self) -> bool:
        """False when ``rate`` is 0 (the limit is off)."""
        return self.rate > 0

    def take(self, key: str, now: float) -> bool:
        """Spend one of ``key``'s tokens; False when the event is over its limit.

        Args:
            key: Whose limit (e.g. :func:`address_key` of the peer).
            now: The current time (monotonic seconds).
        """
        if self.rate <= 0:
            return True
        return self._bucket(key, now).take(now)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0 when it may now)."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.retry_after(now)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is not None:
            buckets.move_to_end(key)
        else:
            bucket = buckets[key] = TokenBucket(self.rate, self.burst, now)
        for _ in range(_DROP_PER_CALL):
            oldest = next(iter(buckets))
            if oldest == key or not buckets[oldest].full(now):
                break
            del buckets[oldest]
        while len(buckets) > self.max_keys:
            buckets.popitem(last=False)
            self._evicted += 1
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)

    def statistics(self) -> dict[str, int]:
        """``keys``: buckets held; ``evicted``: buckets forgotten before they refilled."""
        return {"keys": len(self._buckets), "evicted": self._evicted}


def address_key(host: str) -> str:
    """The rate-limit key of a client's IP address.

    IPv4 addresses are their own key. An IPv6 client is keyed by its /64:
    a single host or home router commonly holds a whole /64 (RFC 6177) and can
    pick any address in it, so a per-address limit would not hold. IPv4-mapped
    IPv6 addresses count as their IPv4 address. Anything that is not an IP
    address (a Unix socket path) is returned unchanged.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from addresses or CIDR blocks (``10.0.0.0/8``, ``::1``).

    Raises:
        ValueError: A value is neither (the message names it).
    """
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return tuple(networks)


def client_address(
    peer: str, forwarded_for: str | None, trusted_proxies: tuple[IPNetwork, ...]
) -> str:
    """The client's IP address, seen through trusted proxies.

    A connection from a trusted proxy (a reverse proxy such as nginx) stands for
    the client its ``X-Forwarded-For`` names: the rightmost address in it that is
    not itself a trusted proxy. Entries left of that were written by the client
    and prove nothing. From anyone else the header is ignored.

    Args:
        peer: The TCP peer's IP address.
        forwarded_for: The ``X-Forwarded-For`` header value, if any (several
            headers joined with commas).
        trusted_proxies: :func:`parse_networks` of the operator's proxies.
    """
    if not forwarded_for or not _within(peer, trusted_proxies):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _within(hop, trusted_proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a proxy wrote something that is not an address
    return hops[0] if hops else peer


def _within(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)
