"""Exact rolling sums of prices, for models that compare moving averages or z-scores.

Prices are kept as integer millionths, so sums never drift over a long day (a float
running sum would, and a crossing decided by 1e-12 would then depend on history), and a
model's signals can be reproduced exactly by anyone with the same data.
"""

from __future__ import annotations

import math
from collections import deque

SCALE = 1_000_000


def units(price: float) -> int:
    """A price in integer millionths."""
    return round(price * SCALE)


class Rolling:
    """The last ``size`` prices of one symbol with their sum and sum of squares."""

    __slots__ = ("size", "sum", "sumsq", "values")

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: deque[int] = deque()
        self.sum = 0
        self.sumsq = 0

    def push(self, value: int) -> None:
        self.values.append(value)
        self.sum += value
        self.sumsq += value * value
        if len(self.values) > self.size:
            old = self.values.popleft()
            self.sum -= old
            self.sumsq -= old * old

    @property
    def full(self) -> bool:
        return len(self.values) == self.size

    def zscore(self, value: int) -> float | None:
        """(value - mean) / population std of the window; None while flat (std 0)."""
        n = len(self.values)
        spread = n * self.sumsq - self.sum * self.sum  # n^2 * variance, exact
        if spread <= 0:
            return None
        return (n * value - self.sum) / math.sqrt(spread)
