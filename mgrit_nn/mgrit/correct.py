"""Coarse-grid correction (design §4): ``u_c += u^(l+1)_I - v_I`` at C-points, then F-relax."""

from __future__ import annotations

import torch

from mgrit_nn.mgrit.relax import f_relax
from mgrit_nn.mgrit.restrict import c_slots


def correct(solver, l: int) -> None:
    fine, coarse = solver.data[l], solver.data[l + 1]
    f_slots, cs = c_slots(solver, l)
    e = solver.work.get("correct", len(cs), coarse.u)
    torch.sub(cs.get(coarse.u), cs.get(coarse.v), out=e)
    f_slots.add_(fine.u, e)
    f_relax(solver, l)
