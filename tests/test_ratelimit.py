"""Token buckets per connection and per key (client address), with an injected clock."""

from __future__ import annotations

import tracemalloc

import pytest

from wschat.server.ratelimit import (
    KeyedRateLimiter,
    TokenBucket,
    address_key,
    client_address,
    parse_networks,
)


def test_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1)
    assert not bucket.take(0.1)


def test_limit_holds_for_one_key_across_its_connections() -> None:
    # A flooder that reconnects keeps its address: 192 connections in 8 s each
    # sent a burst; the address table counts them all against one bucket.
    limiter = KeyedRateLimiter(rate=10, burst=20, max_keys=1000)
    allowed = 0
    for step in range(800):  # 8 s in 10 ms steps, 6 messages a step from "new" connections
        now = step * 0.01
        allowed += sum(limiter.take("203.0.113.7", now) for _ in range(6))
    assert allowed <= 20 + 10 * 8 + 1
    assert allowed >= 20 + 10 * 8 - 1


def test_keys_do_not_share_a_bucket() -> None:
    limiter = KeyedRateLimiter(rate=1, burst=2, max_keys=10)
    assert limiter.take("a", 0.0) and limiter.take("a", 0.0)
    assert not limiter.take("a", 0.0)
    assert limiter.take("b", 0.0) and limiter.take("b", 0.0)
    assert not limiter.take("b", 0.0)
    assert limiter.retry_after("a", 0.0) == pytest.approx(1.0)
    assert limiter.retry_after("never-seen", 0.0) == 0.0


def test_rate_zero_turns_the_limit_off_and_stores_nothing() -> None:
    limiter = KeyedRateLimiter(rate=0, burst=1, max_keys=10)
    assert not limiter.enabled
    assert all(limiter.take(f"k{i}", 0.0) for i in range(1000))
    assert all(limiter.take("k0", 0.0) for _ in range(1000))
    assert len(limiter) == 0 and limiter.retry_after("k0", 0.0) == 0.0


def test_table_stays_within_max_keys_under_100000_distinct_keys() -> None:
    limiter = KeyedRateLimiter(rate=1, burst=5, max_keys=1000)
    tracemalloc.start()
    try:
        for i in range(1000):  # fill the table first: what follows must not grow it
            limiter.take(f"10.0.{i // 256}.{i % 256}", 0.0)
        filled, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i in range(100_000):
            # All at the same instant: no bucket refills, so only eviction bounds the table.
            assert limiter.take(f"key-{i}", 0.0)
            if i % 1000 == 0:
                assert len(limiter) <= 1000
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(limiter) == 1000
    assert limiter.statistics() == {"keys": 1000, "evicted": 100_000}
    # 100x more keys went through than the table holds (unbounded, that is ~22 MB);
    # memory grew by less than the full table's own size (key strings got longer).
    assert filled < 1000 * 400
    assert peak - filled < filled, (filled, current, peak)


def test_most_recently_used_keys_survive_eviction() -> None:
    limiter = KeyedRateLimiter(rate=1, burst=2, max_keys=3)
    limiter.take("flooder", 0.0)
    limiter.take("flooder", 0.0)
    assert not limiter.take("flooder", 0.0)
    for other in ("a", "b"):
        limiter.take(other, 0.0)
    limiter.take("flooder", 0.0)  # refused again, and now the most recently used
    limiter.take("c", 0.0)  # evicts "a", the least recently used
    assert not limiter.take("flooder", 0.0)  # its empty bucket is still there
    assert len(limiter) == 3


def test_refilled_buckets_are_dropped_early() -> None:
    limiter = KeyedRateLimiter(rate=10, burst=5, max_keys=100_000)
    for i in range(50):
        limiter.take(f"client-{i}", 0.0)
    assert len(limiter) == 50
    # One token spent refills in 0.1 s: after that a bucket is as good as new.
    for i in range(50):
        limiter.take(f"later-{i}", 1.0 + i * 0.001)
    assert len(limiter) <= 50
    assert not any(f"client-{i}" in limiter._buckets for i in range(40))
    assert limiter.statistics()["evicted"] == 0


def test_dropping_a_refilled_bucket_does_not_loosen_the_limit() -> None:
    limiter = KeyedRateLimiter(rate=1, burst=2, max_keys=100)
    assert limiter.take("a", 0.0) and limiter.take("a", 0.0)
    limiter.take("b", 10.0)  # "a" refilled long ago and is dropped
    assert limiter.take("a", 10.0) and limiter.take("a", 10.0)
    assert not limiter.take("a", 10.0)  # a dropped bucket comes back full, never fuller


def test_address_key() -> None:
    assert address_key("203.0.113.7") == "203.0.113.7"
    # One /64 is one client: its host picks any address in it.
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("/run/wschat.sock") == "/run/wschat.sock"


PROXIES = parse_networks(["127.0.0.1", "10.0.0.0/8"])


def test_a_trusted_proxy_stands_for_the_client_it_names() -> None:
    assert client_address("127.0.0.1", "203.0.113.7", PROXIES) == "203.0.113.7"
    # A chain of proxies: the rightmost hop that is not one of ours is the client;
    # what the client itself wrote further left is ignored.
    chain = "198.51.100.1, 203.0.113.7, 10.1.2.3"
    assert client_address("10.9.9.9", chain, PROXIES) == "203.0.113.7"


def test_forwarded_for_from_anyone_else_is_ignored() -> None:
    assert client_address("203.0.113.7", "198.51.100.1", PROXIES) == "203.0.113.7"
    assert client_address("127.0.0.1", None, PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", "198.51.100.1", ()) == "127.0.0.1"


def test_garbage_from_a_proxy_falls_back_to_the_peer() -> None:
    assert client_address("127.0.0.1", "unknown", PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", " , ", PROXIES) == "127.0.0.1"
    assert client_address("::ffff:127.0.0.1", "2001:db8::1", PROXIES) == "2001:db8::1"


def test_parse_networks_names_a_bad_value() -> None:
    assert parse_networks(["::1", " 192.168.0.0/16 "])[1].num_addresses == 65536
    with pytest.raises(ValueError, match=r"'proxy\.example' is not an IP address or network"):
        parse_networks(["proxy.example"])
