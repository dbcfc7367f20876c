"""Capped exponential backoff with full jitter, so many agents do not retry in step."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    _current: float = 0.0

    def next_delay(self) -> float:
        """Delay before the next attempt; grows after every call until :meth:`reset`."""
        self._current = (
            self.initial if self._current == 0 else min(self._current * self.factor, self.maximum)
        )
        # Jitter in [current/2, current]: never zero (no hot loop), still spread out.
        return self._current / 2 + self.rng.random() * self._current / 2

    def reset(self) -> None:
        self._current = 0.0
