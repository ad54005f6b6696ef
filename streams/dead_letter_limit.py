"""A limit on dead letters: when most of the traffic is refused, stop instead of parking it.

One bad message is the sender's fault and is dead-lettered. Most messages refused at once
is ours (a broken mapping table, a database table that rejects every row, a schema change
upstream): parking all of them while the consumer commits on would empty the ward's
scores into the dead-letter topic. As arroyo's ``DlqLimit`` does, each agent counts the
messages it took and those it dead-lettered over a sliding window; once the window holds
at least ``min_messages`` and the dead share is above ``max_ratio``, the agent stops the
worker without acknowledging the batch (``streams.worker.agents``), with a log line that says so and
the metric ``wardwatch_dead_letter_limit_exceeded_total``.

Pure: the caller passes the time. Raises nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class DeadLetterLimit:
    """Messages taken and dead-lettered per second, over the last ``window_s`` seconds.

    ``max_ratio`` 1.0 turns the limit off (no share of dead letters is above it).
    """

    max_ratio: float
    window_s: float
    min_messages: int
    _seconds: deque[list[int]] = field(default_factory=deque)  # [second, taken, dead]
    _taken: int = 0
    _dead: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.max_ratio <= 1.0:
            raise ValueError(f"dead-letter max ratio must be in (0, 1], got {self.max_ratio}")
        if self.window_s <= 0 or self.min_messages < 1:
            raise ValueError("dead-letter limit window and minimum must be positive")

    def record(self, taken: int, dead: int, now: float) -> None:
        """Count ``taken`` messages, ``dead`` of them dead-lettered, at time ``now`` (s)."""
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += taken
            self._seconds[-1][2] += dead
        else:
            self._seconds.append([second, taken, dead])
        self._taken += taken
        self._dead += dead

    def _expire(self, now: float) -> None:
        while self._seconds and self._seconds[0][0] <= now - self.window_s:
            _, taken, dead = self._seconds.popleft()
            self._taken -= taken
            self._dead -= dead

    def exceeded(self, now: float) -> str | None:
        """Why the limit is exceeded at ``now``, or None while it is not."""
        self._expire(now)
        if self.max_ratio >= 1.0 or self._taken < self.min_messages:
            return None
        if self._dead <= self.max_ratio * self._taken:
            return None
        return (
            f"{self._dead} of the last {self._taken} messages ({self._dead / self._taken:.0%}) "
            f"were dead-lettered within {self.window_s:g} s, above the limit of "
            f"{self.max_ratio:.0%} (WARDWATCH_DEAD_LETTER_MAX_RATIO)"
        )
