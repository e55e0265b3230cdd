"""Coarse-grid correction (design §4): ``u_c += u^(l+1)_I - v_I`` at C-points, then F-relax.

``v_I`` is the restriction's injection of ``u_c``, and level l has not changed since
(restrict.py): it is read from level l itself. The difference is formed in level l+1's
storage: its iterate is spent once the correction is made (the next cycle restricts anew).
"""

from __future__ import annotations

import torch

from mgrit_nn.mgrit.relax import f_relax
from mgrit_nn.mgrit.restrict import c_slots


def correct(solver, l: int) -> None:
    fine, coarse = solver.data[l], solver.data[l + 1]
    fine_c, coarse_c = c_slots(solver, l)
    assert coarse_c.sl is not None     # a level's own points are a range of slots:
    e = coarse_c.get(coarse.u)         # a view, written in place
    torch.sub(e, fine_c.get(fine.u), out=e)
    fine_c.add_(fine.u, e)
    f_relax(solver, l)
