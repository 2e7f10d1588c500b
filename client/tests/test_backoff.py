"""Retry waits: 15 s, 30 s, 1 min, 2 min, … with jitter, capped."""

from __future__ import annotations

import random

from fieldsync_client import Backoff


def test_waits_double_from_fifteen_seconds_within_the_jitter() -> None:
    backoff = Backoff()
    rng = random.Random(7)
    for attempt, nominal in enumerate([15, 30, 60, 120, 240], start=1):
        waits = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(nominal * 0.8 <= wait <= nominal * 1.2 for wait in waits)
        assert max(waits) - min(waits) > nominal * 0.2  # jittered, not one fixed value


def test_waits_stop_growing_at_the_cap() -> None:
    backoff = Backoff(base=15, cap=600, jitter=0)
    assert backoff.delay(30) == 600


def test_the_cap_holds_with_jitter_and_after_any_number_of_failures() -> None:
    backoff = Backoff(base=15, cap=600)
    rng = random.Random(3)
    assert all(backoff.delay(attempt, rng) <= 600 for attempt in range(1, 5000))
