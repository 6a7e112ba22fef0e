"""Heat figures of DESIGN §8: exponentially weighted rates of bytes and operations.

`Rate` keeps one decayed sum; with half-life H, `per_second(now)` estimates the
recent rate (a steady stream of r units/s converges to r). Pure, clock injected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Rate:
    half_life_s: float
    value: float = 0.0
    at_s: float = 0.0

    def _decay(self, now_s: float) -> None:
        if now_s > self.at_s:
            self.value *= math.exp(-(now_s - self.at_s) * math.log(2) / self.half_life_s)
            self.at_s = now_s

    def add(self, amount: float, now_s: float) -> None:
        self._decay(now_s)
        self.value += amount

    def per_second(self, now_s: float) -> float:
        self._decay(now_s)
        return self.value * math.log(2) / self.half_life_s


@dataclass
class Heat:
    half_life_s: float
    read_bytes: Rate = field(init=False)
    write_bytes: Rate = field(init=False)
    read_ops: Rate = field(init=False)
    write_ops: Rate = field(init=False)

    def __post_init__(self) -> None:
        for name in ("read_bytes", "write_bytes", "read_ops", "write_ops"):
            setattr(self, name, Rate(self.half_life_s))

    def read(self, size: int, now_s: float) -> None:
        self.read_bytes.add(size, now_s)
        self.read_ops.add(1, now_s)

    def wrote(self, size: int, now_s: float) -> None:
        self.write_bytes.add(size, now_s)
        self.write_ops.add(1, now_s)
