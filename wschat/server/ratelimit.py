"""Per-connection rate limiting: a token bucket with an injected clock."""

from __future__ import annotations


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
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
