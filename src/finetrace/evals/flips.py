"""What a fine-tune did to the facts a model knew: kept, lost, gained, never known.

Whether the fine-tune changed knowledge is a paired question (the same facts,
before and after), so the test is McNemar's, exact: under "no change" a fact
that flips is equally likely to be lost or gained.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb


@dataclass(frozen=True)
class FlipMatrix:
    """Counts of facts by (known before, known after)."""

    kept: int
    lost: int
    gained: int
    never: int
    derived = ("lost_fraction", "p_value")

    @property
    def total(self) -> int:
        return self.kept + self.lost + self.gained + self.never

    @property
    def known_before(self) -> int:
        return self.kept + self.lost

    @property
    def known_after(self) -> int:
        return self.kept + self.gained

    @property
    def lost_fraction(self) -> float | None:
        """Share of the facts the base knew that the fine-tune lost; None (not measured) when
        it knew none, which no gate may take for "nothing lost"."""
        return self.lost / self.known_before if self.known_before else None

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.lost, self.gained)


def flip_matrix(before: Sequence[bool], after: Sequence[bool]) -> FlipMatrix:
    pairs = list(zip(before, after, strict=True))
    return FlipMatrix(
        kept=sum(b and a for b, a in pairs),
        lost=sum(b and not a for b, a in pairs),
        gained=sum(a and not b for b, a in pairs),
        never=sum(not b and not a for b, a in pairs),
    )


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of `lost` among the flips at 1/2."""
    flips = lost + gained
    if flips == 0:
        return 1.0
    tail = sum(comb(flips, k) for k in range(min(lost, gained) + 1)) / 2**flips
    return min(1.0, 2 * tail)
