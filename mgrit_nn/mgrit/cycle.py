"""V- and F-cycles (design §4).

``skip`` (first iteration of a cold solve, ``mgrit.skip``): the down-cycle does no
relaxation and no residual work. The fine iterate is only the initial guess, so each
coarse level starts from its injection with g = 0: the coarsest solve then propagates
u_0 on the coarse grid and the up-cycle corrects and F-relaxes as usual.
"""

from __future__ import annotations

from mgrit_nn.mgrit.coarse import coarse_solve
from mgrit_nn.mgrit.correct import correct
from mgrit_nn.mgrit.relax import relax
from mgrit_nn.mgrit.restrict import inject, restrict


def _down(solver, l: int, skip: bool) -> None:
    phase = solver.stats.phase
    if skip:
        with phase("restrict"):
            inject(solver, l)
        return
    with phase("relax"):
        relax(solver, l, solver.relax[l])
    with phase("restrict"):
        restrict(solver, l)


def v_cycle(solver, l: int = 0, skip: bool = False) -> None:
    if l == len(solver.levels) - 1:
        with solver.stats.phase("coarse"):
            coarse_solve(solver, l)
        return
    _down(solver, l, skip)
    v_cycle(solver, l + 1, skip)
    with solver.stats.phase("correct"):
        correct(solver, l)


def f_cycle(solver, l: int = 0, skip: bool = False) -> None:
    """Like a V-cycle, but after each correction on a level l > 0 another V-cycle from l."""
    if l == len(solver.levels) - 1:
        with solver.stats.phase("coarse"):
            coarse_solve(solver, l)
        return
    _down(solver, l, skip)
    f_cycle(solver, l + 1, skip)
    with solver.stats.phase("correct"):
        correct(solver, l)
    if l > 0:
        v_cycle(solver, l)


CYCLES = {"V": v_cycle, "F": f_cycle}
