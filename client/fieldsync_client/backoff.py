"""When to try again after a failure: 15 s, 30 s, 1 min, 2 min, … with jitter.

Slow retries on a weak signal save the battery and the radio; the jitter keeps a crew of
phones that lost the same cell tower from all coming back in the same second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Past this many failures in a row the wait is the cap anyway (and 2.0 ** n stays finite).
MAX_DOUBLINGS = 30


@dataclass(frozen=True)
class Backoff:
    base: float = 15.0
    cap: float = 30 * 60.0
    jitter: float = 0.2  # ± this fraction

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `attempt`-th failure in a row (1 → base)."""
        nominal = min(self.cap, self.base * 2.0 ** min(max(0, attempt - 1), MAX_DOUBLINGS))
        spread: float = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.cap, nominal * (1 + spread)))
