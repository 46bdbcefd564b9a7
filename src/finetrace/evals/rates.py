"""A rate measured on the same prompts before and after a fine-tune, with its intervals.

The counts are a flip matrix (flips.py), so the test of "the rate changed" is its exact
McNemar test. Each rate gets a Wilson score interval (right at 0% and 100%, where a
normal interval collapses) and the paired change the adjusted Wald interval of Bonett and
Price (2012, "Adjusted Wald confidence interval for a difference of binomial proportions
based on paired data"), which keeps its width when no prompt flipped; Newcombe's hybrid
score interval, the usual alternative, shrinks to a point there.
"""

import math
from dataclasses import dataclass
from statistics import NormalDist

from finetrace.evals.flips import FlipMatrix


@dataclass(frozen=True)
class RateChange:
    """How often something happens on paired prompts: before (the base) and after (the fine-tune)."""

    flips: FlipMatrix  # kept: before and after; lost: before only; gained: after only; never
    confidence: float  # of the intervals
    derived = ("before", "after", "change", "before_interval", "after_interval", "change_interval", "p_value")

    @property
    def before(self) -> float:
        return self.flips.known_before / self.flips.total

    @property
    def after(self) -> float:
        return self.flips.known_after / self.flips.total

    @property
    def change(self) -> float:
        """after - before, as a fraction (0.5 = 50 points)."""
        return (self.flips.gained - self.flips.lost) / self.flips.total

    @property
    def before_interval(self) -> tuple[float, float]:
        return wilson(self.flips.known_before, self.flips.total, self.confidence)

    @property
    def after_interval(self) -> tuple[float, float]:
        return wilson(self.flips.known_after, self.flips.total, self.confidence)

    @property
    def change_interval(self) -> tuple[float, float]:
        return paired_change_interval(self.flips, self.confidence)

    @property
    def p_value(self) -> float:
        """Exact McNemar: under "no change" a prompt that flips is as likely to flip either way."""
        return self.flips.p_value


def wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_change_interval(flips: FlipMatrix, confidence: float) -> tuple[float, float]:
    """Bonett and Price's adjusted Wald interval for after - before on paired yes/no outcomes: one
    pseudo-pair added to each kind of flip keeps it honest when nothing or everything flipped."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    n = flips.total + 2
    gained, lost = (flips.gained + 1) / n, (flips.lost + 1) / n
    change = gained - lost
    half = z * math.sqrt((gained + lost - change**2) / n)
    return max(-1.0, change - half), min(1.0, change + half)
