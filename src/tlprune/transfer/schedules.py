"""When: alpha, beta and gamma as functions of the prune-phase step.

The prune phase has two named parts: `ramp` (the sparsity target warms up) and `hold`.
A schedule is read every step (never baked into the loop), so adaptive weights can later
replace it behind the same `Weight.__call__(step)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from tlprune.config.transfer import SCHEDULE_KINDS, ScheduleConfig
from tlprune.registry import Registry

# progress in [0, 1] over the whole prune phase -> factor between value (0) and end (1)
SCHEDULES: Registry[Callable[[float], float]] = Registry("schedule")
SCHEDULES.register("constant", lambda p: 0.0)
SCHEDULES.register("linear", lambda p: p)
SCHEDULES.register("cosine", lambda p: 0.5 * (1.0 - math.cos(math.pi * p)))
assert tuple(SCHEDULES) == SCHEDULE_KINDS, "the config's schedule names and these must agree"


@dataclass
class Weight:
    """A schedule bound to a phase of `steps` steps whose ramp part ends at `ramp_steps`."""

    cfg: ScheduleConfig
    steps: int
    ramp_steps: int

    def part(self, step: int) -> str:
        return "ramp" if step < self.ramp_steps else "hold"

    def __call__(self, step: int) -> float:
        """The weight at optimizer step `step` (0-based) of the prune phase."""
        c = self.cfg
        if c.off_after == "ramp" and self.part(step) == "hold":
            return 0.0
        progress = min(1.0, step / max(1, self.steps - 1))
        value = c.value + (c.end - c.value) * SCHEDULES[c.kind](progress)
        warm = round(c.warmup * self.steps)
        if step < warm:
            value *= step / warm
        return float(value)

    @property
    def always_zero(self) -> bool:
        c = self.cfg
        return c.value == 0 and (c.kind == "constant" or c.end == 0)
