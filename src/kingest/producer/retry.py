"""Exponential backoff with full jitter, and which failures deserve another attempt.

Full jitter (a delay drawn uniformly from zero to the exponential cap) spreads the retries of
many producers hit by the same throttling instead of synchronising them:
https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/
"""

from __future__ import annotations

import random

from kingest.errors import is_retriable_code

__all__ = ["Backoff", "is_retriable_code"]


class Backoff:
    """Delays for consecutive failures: uniform in [0, min(cap, base * 2**failures)].

    Args:
        base_s: cap of the first delay.
        max_s: largest cap.
        rng: random source (seed it in tests).
    """

    def __init__(self, base_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self._rng = rng or random.Random()

    def cap(self, failures: int) -> float:
        """The upper bound of the delay after ``failures`` consecutive failures (>= 1)."""
        exponent = min(max(failures - 1, 0), 62)
        return float(min(self.max_s, self.base_s * (2**exponent)))

    def delay(self, failures: int) -> float:
        """A delay for the next attempt after ``failures`` consecutive failures."""
        return self._rng.uniform(0.0, self.cap(failures))
