"""Validation of the WebSocket opening handshake (RFC 6455 sections 4.1 and 4.2.1).

Pure functions: headers in, a :class:`Rejection` (the HTTP answer) or ``None``
out on the server side; headers in, what is wrong (or ``None``) out on the
client side. The Origin and Host policies live here too, because they are
decided on the request.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from wsproto.utilities import generate_accept_token

from .events import Headers

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# A browser hides the answer to a refused upgrade, and its plain same-origin
# `fetch` of the URL (which it can read) carries no Origin, so the bundled page
# (reasons.js) names its origin here to learn whether the Origin check refused
# it. Safe: it can only turn an answer into that 403, never admit anything.
PROBE_ORIGIN_HEADER = "x-wschat-probe-origin"


@dataclass(frozen=True, slots=True)
class Rejection:
    """The HTTP answer to a request that cannot be upgraded.

    Attributes:
        status: HTTP status code (400, 403, 405, 426).
        reason: A short text body saying what was wrong.
        headers: Extra response headers (e.g. ``Sec-WebSocket-Version: 13``).
        probe: The answer to a page's probe (``X-Wschat-Probe-Origin``), not to
            a handshake: logs and metrics keep it apart from refused handshakes.
    """

    status: int
    reason: str
    headers: Headers = ()
    probe: bool = False


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Which browser origins may open a WebSocket.

    By default only the same origin: the Origin's host:port must equal the
    Host header (gorilla's safe default). ``allowed`` widens it with exact
    origins such as ``"https://app.example.com"``; ``"*"`` allows any. A
    request with no Origin header (a non-browser client) is always allowed:
    Origin protects browsers' users, and other clients can forge it anyway.

    Attributes:
        allowed: Extra origins allowed besides the same origin.
    """

    allowed: tuple[str, ...] = ()

    def check(self, origin: str | None, host: str | None) -> bool:
        """Return True when a request with this Origin and Host may connect."""
        if origin is None:
            return True
        normalized = origin.strip().rstrip("/").lower()
        if "*" in self.allowed or normalized in (a.rstrip("/").lower() for a in self.allowed):
            return True
        if host is None:
            return False
        origin_netloc = _origin_netloc(normalized)
        return origin_netloc is not None and origin_netloc == _host_netloc(host, normalized)


# Names that always reach this machine: a rebinding attacker cannot make a
# browser send them for a page of his own.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which ``Host`` header values the server answers (DNS-rebinding protection).

    A page on ``http://attacker.example`` whose name the attacker re-points at
    127.0.0.1 reaches this server with ``Host`` and ``Origin`` both
    ``attacker.example``, so the same-origin check passes; refusing Hosts we
    do not serve stops it (the defence of Django's ``ALLOWED_HOSTS``).

    Matching ignores the port and the case. An entry is an exact name or IP
    (``chat.example.com``, ``192.0.2.7``, ``[::1]``), ``*.example.com`` (any
    subdomain, not ``example.com`` itself) or ``*`` (any Host: for a proxy
    that rewrites it). A request without ``Host`` (HTTP/1.0 only: h11 refuses
    HTTP/1.1 without it) is allowed, since browsers always send one.

    Attributes:
        allowed: Names and patterns, normalized (lower-case, no port, no
            brackets around IPv6, no trailing dot).
        any_ip_literal: Also allow any IP literal: an IP-literal Host cannot
            come from a rebinding attack (the browser resolved no name).
    """

    allowed: tuple[str, ...] = LOOPBACK_HOSTS
    any_ip_literal: bool = False

    @classmethod
    def for_bind(cls, bind_host: str, allowed: Iterable[str] = ()) -> HostPolicy:
        """The default policy for a server bound to ``bind_host``, widened by ``allowed``.

        The bound address, ``localhost``, ``127.0.0.1`` and ``[::1]``; on a
        wildcard address (``0.0.0.0``, ``::``) any IP literal as well, since
        the server then answers on every address of the machine.
        """
        names = [*LOOPBACK_HOSTS, *allowed]
        if bind_host not in WILDCARD_ADDRESSES:
            names.append(bind_host)
        normalized = tuple(dict.fromkeys(n for n in map(_normalize_pattern, names) if n))
        return cls(normalized, any_ip_literal=bind_host in WILDCARD_ADDRESSES)

    def check(self, host: str | None) -> bool:
        """Return True when a request with this ``Host`` header may be answered."""
        if host is None:
            return True
        if "*" in self.allowed:
            return True
        name = host_name(host)
        if name is None:
            return False
        if self.any_ip_literal and _is_ip_literal(name):
            return True
        return any(
            name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:]))
            for pattern in self.allowed
        )


def host_name(host: str) -> str | None:
    """The name part of a ``Host`` value, normalized; None when it is not a valid Host.

    RFC 9110 7.2: ``Host = uri-host [ ":" port ]``; an IPv6 literal is in brackets.
    """
    host = host.strip().lower()
    if host.startswith("["):
        literal, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return literal if _is_ip_literal(literal) else None
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None
    name = name.rstrip(".")
    if not name or any(not (c.isascii() and (c.isalnum() or c in "-._~")) for c in name):
        return None
    return name


def _normalize_pattern(pattern: str) -> str:
    pattern = pattern.strip().lower()
    if pattern == "*":
        return pattern
    if pattern.startswith("*."):
        return "*." + (host_name(pattern[2:]) or "")
    if not pattern.startswith("[") and _is_ip_literal(pattern):
        return pattern  # a bare IPv6 address such as ::1
    return host_name(pattern) or ""


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _origin_netloc(origin: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.scheme not in DEFAULT_PORTS:
        return None
    return parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


def _host_netloc(host: str, origin: str) -> tuple[str, int] | None:
    scheme = origin.split(":", 1)[0]
    try:
        parts = urlsplit(f"//{host.strip().lower()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port if port is not None else DEFAULT_PORTS.get(scheme, 80)


def header_tokens(headers: Headers, name: str) -> list[str]:
    """All comma-separated tokens of every ``name`` header, lower-cased."""
    return [
        token.strip().lower()
        for key, value in headers
        if key == name
        for token in value.split(",")
        if token.strip()
    ]


def header_value(headers: Headers, name: str) -> str | None:
    """The first value of header ``name`` (lower-case name), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def check_websocket_request(
    method: str, http_version: str, headers: Headers, origin_policy: OriginPolicy
) -> Rejection | None:
    """Validate an opening handshake; return the rejection or None when valid.

    A page's probe (a plain GET carrying :data:`PROBE_ORIGIN_HEADER`) is never
    valid: it gets the Origin check's 403 when an upgrade from the origin it
    names would get it, else a 400 that says the origin passed.
    """
    if method != "GET":
        return Rejection(405, "WebSocket handshakes use GET", (("allow", "GET"),))
    if http_version != "1.1":
        return Rejection(400, "WebSocket needs HTTP/1.1")
    if "websocket" not in header_tokens(headers, "upgrade"):
        probed = header_value(headers, PROBE_ORIGIN_HEADER)
        if probed is not None:
            refusal = _origin_refusal(probed, headers, origin_policy)
            if refusal is not None:
                return replace(refusal, probe=True)
            return Rejection(400, "origin allowed; this is not a WebSocket upgrade", probe=True)
        return Rejection(400, "missing header: Upgrade: websocket")
    if "upgrade" not in header_tokens(headers, "connection"):
        return Rejection(400, "missing header: Connection: upgrade")
    keys = [value for name, value in headers if name == "sec-websocket-key"]
    if not keys:
        return Rejection(400, "missing header: Sec-WebSocket-Key")
    # RFC 6455 11.3.1: it "MUST NOT appear more than once in an HTTP request".
    if len(keys) > 1:
        return Rejection(400, "more than one Sec-WebSocket-Key header")
    if not is_valid_key(keys[0]):
        return Rejection(400, "invalid Sec-WebSocket-Key: must be base64 of 16 bytes")
    versions = header_tokens(headers, "sec-websocket-version")
    if versions != ["13"]:
        return Rejection(
            426,
            "unsupported Sec-WebSocket-Version: this server speaks version 13",
            (("sec-websocket-version", "13"),),
        )
    return _origin_refusal(header_value(headers, "origin"), headers, origin_policy)


def _origin_refusal(
    origin: str | None, headers: Headers, origin_policy: OriginPolicy
) -> Rejection | None:
    if origin_policy.check(origin, header_value(headers, "host")):
        return None
    return Rejection(403, f"origin not allowed: {origin}")


def is_valid_key(key: str) -> bool:
    """RFC 6455 4.1: the key is "a randomly selected 16-byte value ... base64-encoded"."""
    try:
        return len(base64.b64decode(key.strip().encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        return False


def offered_extensions(headers: Headers) -> Sequence[str]:
    """The extension offers of every Sec-WebSocket-Extensions header."""
    return [
        offer.strip()
        for key, value in headers
        if key == "sec-websocket-extensions"
        for offer in value.split(",")
        if offer.strip()
    ]


def decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """h11's header list as text; latin-1 keeps every byte (RFC 9110 5.5)."""
    return tuple((name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw)


def accept_token(key: str) -> str:
    """RFC 6455 4.2.2: base64(SHA-1(key + GUID)), the Sec-WebSocket-Accept for ``key``."""
    return generate_accept_token(key.strip().encode("ascii")).decode("ascii")


def check_websocket_response(headers: Headers, key: str) -> str | None:
    """RFC 6455 4.1: check a 101 answer to a handshake sent with ``key``.

    Extensions are checked by the caller, which knows what it offered.

    Returns:
        What is wrong with the response, or None when it is a valid 101.
    """
    if header_tokens(headers, "upgrade") != ["websocket"]:
        return "101 response without Upgrade: websocket"
    if "upgrade" not in header_tokens(headers, "connection"):
        return "101 response without Connection: upgrade"
    accepts = [value.strip() for name, value in headers if name == "sec-websocket-accept"]
    if not accepts:
        return "101 response without Sec-WebSocket-Accept"
    # RFC 6455 11.3.3: it "MUST NOT appear more than once in an HTTP response".
    if len(accepts) > 1:
        return "101 response with more than one Sec-WebSocket-Accept"
    if accepts[0] != accept_token(key):
        return "wrong Sec-WebSocket-Accept for the key sent"
    if header_value(headers, "sec-websocket-protocol") is not None:
        # We offer no subprotocol; the server "MUST" not pick one we did not offer.
        return "101 response selects a subprotocol that was not offered"
    return None


def tries_to_upgrade(headers: Headers) -> bool:
    """Whether a request to a WebSocket path is a (perhaps broken) upgrade attempt,
    or a page's probe of its Origin (:data:`PROBE_ORIGIN_HEADER`), rather than a
    plain request such as a page's ``fetch`` of the same URL."""
    return any(
        name in ("upgrade", "sec-websocket-key", "sec-websocket-version", PROBE_ORIGIN_HEADER)
        for name, _ in headers
    )
