"""When to try again after a failure: 15 s, 30 s, 1 min, 2 min, … with jitter.

Slow retries on a weak signal save the battery and the radio; the jitter keeps a crew of
phones that lost the same cell tower from all coming back in the same second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 15.0
    cap: float = 30 * 60.0
    jitter: float = 0.2  # ± this fraction

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `attempt`-th failure in a row (1 → base)."""
        nominal = min(self.cap, self.base * 2.0 ** max(0, attempt - 1))
        spread: float = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, nominal * (1 + spread))
