"""Coarsest level: sequential time stepping ``u_I = Phi~_I(u_{I-1})``, passed rank to rank."""

from __future__ import annotations

from mgrit_nn.mgrit.relax import sweep


def coarse_solve(solver, l: int) -> None:
    sweep(solver, l, "all")
