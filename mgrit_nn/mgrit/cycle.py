"""V- and F-cycles (design §4).

No redundant work between iterations: every iteration ends with a correction and an
F-relaxation on level 0, and the stopping test evaluates the fine residual at the C-points
of that iterate. The next iteration therefore leaves out its first level-0 F-relaxation,
and with F-relaxation (nothing changes level 0 before the restriction) restricts the
residual already computed (``solver.r0``): one fine sweep less per iteration.

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
    # Level 0 after a completed iteration is F-relaxed and unchanged since the residual:
    # its first F-relaxation would recompute the same values, and with plain F-relaxation
    # the restriction's fine residual is the one the stopping test just computed.
    relaxed = l == 0 and solver.r0 is not None
    with phase("relax"):
        relax(solver, l, solver.relax[l], first_f=not relaxed)
    r = solver.r0 if relaxed and solver.relax[l] == "F" else None
    if l == 0:
        solver.r0 = None
    with phase("restrict"):
        restrict(solver, l, r)


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
