"""Coarse-grid correction (design §4): ``u_c += u^(l+1)_I - v_I`` at C-points, then F-relax."""

from __future__ import annotations

from mgrit_nn.mgrit.relax import f_relax
from mgrit_nn.mgrit.restrict import c_slots


def correct(solver, l: int) -> None:
    fine, coarse = solver.data[l], solver.data[l + 1]
    f_slots, cs = c_slots(solver, l)
    e = coarse.u.index_select(0, cs) - coarse.v.index_select(0, cs)
    fine.u.index_add_(0, f_slots, e)
    f_relax(solver, l)
