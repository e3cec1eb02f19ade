"""The one backoff policy: every retry loop in quotaflow (provider calls, backend calls after
a broken connection, outbox replays) waits by a :class:`RetryPolicy`. The constants are the
provider-call defaults; the backend and the outbox use their own instances."""

from __future__ import annotations

import random
from dataclasses import dataclass

INITIAL_DELAY = 0.5
"""Seconds before the first retry when the provider sent no ``Retry-After``."""
MULTIPLIER = 2.0
"""Each further retry waits this many times longer."""
MAX_DELAY = 8.0
"""No backoff step waits longer than this (a ``Retry-After`` may, within the deadline)."""
JITTER = 0.2
"""Backoff steps vary by ±20 % so that clients rejected together do not return together."""
MAX_ATTEMPTS = 4
"""Attempts in total, the first one included."""
DEADLINE = 60.0
"""Seconds from the first attempt after which no retry starts."""


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before retrying (for providers: a 408/409/429/5xx answer or
    a connect error).

    Backoff: ``initial_delay * multiplier ** (retry - 1)``, capped at ``max_delay``, ±``jitter``.
    A ``Retry-After`` (or ``retry-after-ms``) header replaces the backoff step. No retry
    starts after ``max_attempts`` attempts, or when its wait would end past ``deadline``
    seconds from the first attempt: the call then fails at once with ``retry_after`` set on
    the error, rather than sleeping into a budget it cannot use.
    """

    initial_delay: float = INITIAL_DELAY
    multiplier: float = MULTIPLIER
    max_delay: float = MAX_DELAY
    jitter: float = JITTER
    max_attempts: int = MAX_ATTEMPTS
    deadline: float = DEADLINE

    def backoff(self, retry: int, rand: float | None = None) -> float:
        """The wait before retry number ``retry`` (1-based); ``rand`` in [0, 1) picks jitter
        (by default at random)."""
        if rand is None:
            rand = random.random()
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, retry - 1))
        return max(0.0, base * (1 + self.jitter * (2 * rand - 1)))

    def next_delay(
        self, attempts: int, elapsed: float, retry_after: float | None, rand: float = 0.5
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        ``attempts`` made so far, ``elapsed`` seconds since the first began.
        """
        if attempts >= self.max_attempts:
            return None
        delay = retry_after if retry_after is not None else self.backoff(attempts, rand)
        if elapsed + delay > self.deadline:
            return None
        return delay
