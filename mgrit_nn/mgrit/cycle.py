"""V- and F-cycles (design §4)."""

from __future__ import annotations

from mgrit_nn.mgrit.coarse import coarse_solve
from mgrit_nn.mgrit.correct import correct
from mgrit_nn.mgrit.relax import relax
from mgrit_nn.mgrit.restrict import restrict


def v_cycle(solver, l: int = 0) -> None:
    phase = solver.stats.phase
    if l == len(solver.levels) - 1:
        with phase("coarse"):
            coarse_solve(solver, l)
        return
    with phase("relax"):
        relax(solver, l, solver.relax[l])
    with phase("restrict"):
        restrict(solver, l)
    v_cycle(solver, l + 1)
    with phase("correct"):
        correct(solver, l)


def f_cycle(solver, l: int = 0) -> None:
    """Like a V-cycle, but after each correction on a level l > 0 another V-cycle from l."""
    phase = solver.stats.phase
    if l == len(solver.levels) - 1:
        with phase("coarse"):
            coarse_solve(solver, l)
        return
    with phase("relax"):
        relax(solver, l, solver.relax[l])
    with phase("restrict"):
        restrict(solver, l)
    f_cycle(solver, l + 1)
    with phase("correct"):
        correct(solver, l)
    if l > 0:
        v_cycle(solver, l)


CYCLES = {"V": v_cycle, "F": f_cycle}
