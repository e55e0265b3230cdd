"""Distribution over ranks and the level hierarchy (design §3, §4)."""

from __future__ import annotations

import pytest

from mgrit_nn.mgrit.hierarchy import Chain, build_levels, level_sizes


@pytest.mark.parametrize("N,P", [(63, 4), (64, 3), (7, 8), (257, 4), (10, 1)])
def test_block_distribution_covers_each_point_once(N, P):
    chain = Chain.block(N, P)
    owned = [i for r in range(P) for i in range(*[a + b for a, b in
             zip(chain.local_range(r), (0, 1), strict=True)])]
    assert owned == list(range(N + 1))
    assert chain.local_range(1 % P)[0] == (1 % P) * (N + 1) // P


def test_reverse_chain_keeps_owners():
    """The adjoint grid tau = N - i keeps every point on its forward owner."""
    N, P = 23, 4
    fwd, rev = Chain.block(N, P), Chain.block(N, P, reverse=True)
    assert all(fwd.owner(i) == rev.owner(N - i) for i in range(N + 1))
    assert rev.ranks == (3, 2, 1, 0)


def test_levels_stop_at_min_coarse():
    assert level_sizes(64, [4] * 10, 10, 2) == [1, 4, 16]
    assert level_sizes(64, [4] * 10, 2, 2) == [1, 4]
    assert level_sizes(63, [4] * 10, 10, 1) == [1, 4, 16]
    assert level_sizes(256, [2, 4, 4, 4], 10, 2) == [1, 2, 8, 32, 128]
    assert level_sizes(3, [4], 10, 2) == [1]


@pytest.mark.parametrize("N,P", [(63, 4), (7, 4), (64, 3), (33, 2)])
def test_levels_partition_coarse_points_and_neighbours(N, P):
    chain = Chain.block(N, P)
    per_rank = [build_levels(chain, r, [4, 4, 4], 3, 1) for r in range(P)]
    for l in range(len(per_rank[0])):
        levs = [lv[l] for lv in per_rank]
        pts = [i for lev in levs for i in lev.points()]
        assert pts == list(range(levs[0].n))           # each level point exactly once
        for lev in levs:
            if lev.n_local == 0:
                continue
            if lev.lo > 0:
                assert lev.left is not None and lev.lo - 1 in per_rank[lev.left][l].points()
            if lev.hi + 1 < lev.n:
                assert lev.right is not None and lev.hi + 1 in per_rank[lev.right][l].points()
    # N = 7 on 4 ranks: points 0-1, 2-3, 4-5, 6-7; level 1 = {0, 4}: ranks 1 and 3 own none
    if (N, P) == (7, 4):
        assert [lv[1].n_local for lv in per_rank] == [1, 0, 1, 0]
