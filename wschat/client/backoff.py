"""When to reconnect, and how long to wait first. Pure: randomness is passed in.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): attempt
``n`` waits a uniformly random time in ``[0, min(maximum, initial * factor**n))``.
Spreading reconnects over the whole window is what keeps thousands of clients
of a restarted server from coming back in one wave (phoenix#4045,
mattermost-webapp#10960 in the research notes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Close codes after which a new connection can succeed (RFC 6455 7.4.1, IANA registry).
RECONNECT_CLOSE_CODES = frozenset(
    {
        1001,  # going away: the server is shutting down (wschat's drain)
        1006,  # abnormal: TCP ended without a close frame
        1011,  # internal error, or wschat's keepalive timeout
        1012,  # service restart; wschat: this node lost messages, recover from history
        1013,  # try again later: wschat's slow consumer or hub backend unavailable
        1014,  # bad gateway (a proxy)
    }
)

# HTTP statuses of a refused handshake that can pass: too many connections from
# this address (wschat: 429), a server draining or full (503), both with
# Retry-After; or a proxy between deploys (502, 504).
RECONNECT_STATUSES = frozenset({429, 502, 503, 504})

# wschat's close code for "token expired" (a fresh token helps). The client keeps
# its own copy: it does not import the server's app layer.
TOKEN_EXPIRED = 4408


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter between reconnection attempts.

    The defaults are centrifuge-js's (minReconnectDelay 500 ms,
    maxReconnectDelay 20 s): a restart of a few seconds is bridged in a few
    seconds, a long outage costs a server one attempt per client every ~10 s.

    Attributes:
        initial: Upper bound of the first wait, in seconds.
        maximum: Cap on the upper bound, in seconds.
        factor: Growth of the upper bound per attempt.
        max_attempts: Give up after this many failed attempts in a row
            (None: never).
    """

    initial: float = 0.5
    maximum: float = 20.0
    factor: float = 2.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.maximum:
            raise ValueError("need 0 <= initial <= maximum")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        """Seconds to wait before attempt number ``attempt`` (1 for the first retry).

        Args:
            attempt: How many attempts failed in a row so far (at least 1).
            random: A uniform random number in [0, 1), e.g. ``random.Random().random``.
        """
        # Cap first, then jitter (streamlit#15902); the exponent is bounded so a
        # long outage cannot overflow the float.
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt - 1, 64))
        return ceiling * random()

    def gives_up(self, attempt: int) -> bool:
        """True when ``attempt`` failed attempts in a row are the last allowed."""
        return self.max_attempts is not None and attempt >= self.max_attempts


def reconnect_after_close(code: int, token_refreshable: bool) -> bool:
    """True when a connection closed with ``code`` is worth opening again.

    Codes that say the client itself was refused (1002 protocol error, 1003,
    1007, 1008 policy, 1009 too big, 4401 authentication failed, ...) would only
    be refused again. 1000 means the server ended the session on purpose.
    """
    return code in RECONNECT_CLOSE_CODES or (code == TOKEN_EXPIRED and token_refreshable)


def reconnect_after_status(status: int) -> bool:
    """True when a handshake refused with HTTP ``status`` is worth retrying."""
    return status in RECONNECT_STATUSES


def retry_after(headers: tuple[tuple[str, str], ...]) -> float | None:
    """The seconds of a ``Retry-After: N`` header (the HTTP-date form is ignored)."""
    for name, value in headers:
        if name == "retry-after":
            try:
                seconds = float(value.strip())
            except ValueError:
                return None
            return seconds if seconds >= 0 else None
    return None


def delay_before_retry(
    backoff: Backoff | None,
    attempt: int,
    random: Callable[[], float],
    status: int | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> float | None:
    """Seconds to wait after failed attempt number ``attempt`` to connect, or None to give up.

    Args:
        backoff: The policy (None: never retry).
        attempt: Failed attempts in a row, this one included.
        random: Uniform numbers in [0, 1).
        status: The HTTP status of a refused handshake; None when no answer came
            (refused TCP connection, timeout, TLS failure): always worth a retry.
        headers: The refusal's headers: a ``Retry-After`` is waited for (capped
            at ``backoff.maximum``).
    """
    if backoff is None or backoff.gives_up(attempt):
        return None
    if status is not None and not reconnect_after_status(status):
        return None
    delay = backoff.delay(attempt, random)
    wanted = retry_after(headers)
    if wanted is not None:
        delay = max(delay, min(wanted, backoff.maximum))
    return delay
