"""The time grid, its distribution over ranks, and the level hierarchy (design §3, §4).

A *chain* orders the ranks along the time axis: chain position q owns the fine
points ``[start[q], start[q+1] - 1]``. The forward solve uses the block
distribution with position = rank; the adjoint reuses the same machinery on the
reversed grid with the chain reversed, so no state moves between ranks.

Level ``l`` keeps every ``M_l``-th fine point (``M_l = prod(cfactor[:l])``);
its point ``I`` is fine point ``I * M_l`` and lives on the rank owning that
fine point. Every rank stores its level points in slots ``1..n_local``; slot
0 holds the *ghost*, the value of the point just left of its range.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from mgrit_nn.schema import at_level


def block_starts(n_points: int, n_parts: int) -> list[int]:
    """``lo_p = floor(p * n_points / P)``; position q owns ``[starts[q], starts[q+1])``."""
    return [(q * n_points) // n_parts for q in range(n_parts + 1)]


@dataclass(frozen=True)
class Chain:
    """Which rank owns which fine points, and in which order ranks follow in time."""

    N: int                      # fine steps; points 0..N
    starts: tuple[int, ...]     # len P+1, starts[0] = 0, starts[P] = N+1
    ranks: tuple[int, ...]      # rank at each chain position

    @classmethod
    def block(cls, N: int, P: int, reverse: bool = False) -> Chain:
        """Block distribution of points 0..N (design §3); ``reverse`` for the adjoint grid."""
        starts = block_starts(N + 1, P)
        if not reverse:
            return cls(N, tuple(starts), tuple(range(P)))
        # rank p owns forward points [lo_p, hi_p] = reversed points [N-hi_p, N-lo_p]
        rstarts = [N + 1 - starts[P - q] for q in range(P + 1)]
        return cls(N, tuple(rstarts), tuple(reversed(range(P))))

    def position_of_point(self, i: int) -> int:
        return bisect.bisect_right(self.starts, i) - 1

    def owner(self, i: int) -> int:
        """Rank owning fine point i."""
        return self.ranks[self.position_of_point(i)]

    def position(self, rank: int) -> int:
        return self.ranks.index(rank)

    def local_range(self, rank: int) -> tuple[int, int]:
        q = self.position(rank)
        return self.starts[q], self.starts[q + 1] - 1


@dataclass
class Level:
    """One level as seen by one rank."""

    index: int
    stride: int          # M_l: fine points per level-l step
    n: int               # number of level-l points (0..n-1)
    cfactor: int         # C-points of this level are multiples of cfactor (unused on the coarsest)
    lo: int              # first local level-l point; lo > hi means no local point
    hi: int
    left: int | None     # rank owning point lo-1
    right: int | None    # rank owning point hi+1
    plans: dict = field(default_factory=dict)   # cached sweep plans (see relax.py)

    @property
    def n_local(self) -> int:
        return max(0, self.hi - self.lo + 1)

    def points(self) -> range:
        return range(self.lo, self.hi + 1)

    def slot(self, point: int) -> int:
        return point - self.lo + 1

    def is_c(self, point: int) -> bool:
        return point % self.cfactor == 0


def level_sizes(N: int, cfactors: list[int], max_levels: int, min_coarse: int) -> list[int]:
    """Strides M_l of the levels that fit: stop before a level has < min_coarse intervals."""
    strides = [1]
    while len(strides) < max_levels:
        nxt = strides[-1] * at_level(cfactors, len(strides) - 1)
        if N // nxt < min_coarse:
            break
        strides.append(nxt)
    return strides


def build_levels(chain: Chain, rank: int, cfactors: list[int], max_levels: int,
                 min_coarse: int) -> list[Level]:
    """The hierarchy on ``rank`` (the last of ``cfactors`` repeats on coarser levels)."""
    lo0, hi0 = chain.local_range(rank)
    levels = []
    for l, stride in enumerate(level_sizes(chain.N, cfactors, max_levels, min_coarse)):
        n = chain.N // stride + 1
        lo = -(-lo0 // stride)              # ceil
        hi = min(hi0 // stride, n - 1)
        left = chain.owner((lo - 1) * stride) if lo <= hi and lo > 0 else None
        right = chain.owner((hi + 1) * stride) if lo <= hi and hi + 1 < n else None
        levels.append(Level(l, stride, n, at_level(cfactors, l), lo, hi, left, right))
    return levels
