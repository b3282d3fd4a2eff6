"""Exponential backoff with jitter: when to try again after `attempts` failures."""

from __future__ import annotations

import random
from datetime import timedelta


def backoff_s(attempts: int, *, base_s: float, cap_s: float, jitter: float = 0.25) -> float:
    """Seconds to wait after the `attempts`-th failure: base·2^(attempts-1), capped, ±jitter."""
    delay = min(base_s * 2 ** max(attempts - 1, 0), cap_s)
    return delay * random.uniform(1 - jitter, 1 + jitter)


def backoff(attempts: int, *, base_s: float, cap_s: float, jitter: float = 0.25) -> timedelta:
    """`backoff_s` as a timedelta, for the next attempt's due time."""
    return timedelta(seconds=backoff_s(attempts, base_s=base_s, cap_s=cap_s, jitter=jitter))
