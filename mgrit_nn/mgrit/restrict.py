"""FAS restriction from level l to level l+1 (design §4).

At each coarse point I >= 1 with fine index c = I*m on level l::

    r_c          = g_c + Phi^(l)_c(u_{c-1}) - u_c
    v_I          = u_c                          (injection)
    g^(l+1)_I    = r_c + v_I - Phi^(l+1)_I(v_{I-1})
    u^(l+1)      = v

``v`` is not stored: level l is not touched between its restriction and its correction
(only the coarser levels are), so ``v`` is always the level-l iterate at its C-points, and
the correction reads it there (correct.py). One state set per coarse level saved.
"""

from __future__ import annotations

import torch

from mgrit_nn.mgrit.propagator import Index
from mgrit_nn.mgrit.relax import evaluate, members


def c_slots(solver, l: int) -> tuple[Index, Index]:
    """Slots of the local C-points of level l (point 0 included) and of the same
    points on level l+1, in the same order."""
    key = ("c-slots",)
    lev = solver.levels[l]
    if key not in lev.plans:
        pts = list(solver.levels[l + 1].points())
        lev.plans[key] = (Index.of([lev.slot(I * lev.cfactor) for I in pts], solver.device),
                          Index.of([solver.levels[l + 1].slot(I) for I in pts], solver.device))
    return lev.plans[key]


def fine_residual(solver, l: int) -> torch.Tensor:
    """``g_c + Phi(u_{c-1}) - u_c`` at the local C-points c >= 1 of level l, in slot order
    (rows of the evaluation buffer)."""
    slots, r = evaluate(solver, l, "C", with_g=True)
    return r.sub_(slots.get(solver.data[l].u))


def restrict(solver, l: int, r: torch.Tensor | None = None) -> None:
    """``r``: the fine residual if already known (see cycle.py)."""
    fine, coarse = solver.data[l], solver.data[l + 1]
    fine_c, coarse_c = c_slots(solver, l)
    if r is None:
        r = fine_residual(solver, l)
    coarse_c.put(coarse.u, fine_c.get(fine.u))                  # u^(l+1) = v
    # the coarse members (I >= 1) are the fine C-points c >= 1, in the same order;
    # Phi^(l+1)(v) is evaluated straight into g's rows, then g = r + v - Phi^(l+1)(v)
    cslots = members(solver, l + 1, "all")
    assert cslots.sl is not None       # a range of slots: its g rows are a view, written into
    _, phi_c = evaluate(solver, l + 1, "all", with_g=False, into=cslots.get(coarse.g))
    torch.sub(r.add_(cslots.get(coarse.u)), phi_c, out=phi_c)


def inject(solver, l: int) -> None:
    """The skipped first down-cycle: level l+1 starts from the injected level-l iterate,
    with no FAS right-hand side (g = 0)."""
    fine, coarse = solver.data[l], solver.data[l + 1]
    fine_c, coarse_c = c_slots(solver, l)
    coarse_c.put(coarse.u, fine_c.get(fine.u))
    coarse.g.zero_()
