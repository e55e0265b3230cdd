"""The MGRIT core alone, on a toy propagator: the scalar Dahlquist problem u' = a u.

No config file, data set or network: a propagator of a few lines (forward Euler with
the level's step size, u <- (1 + a h_l) u, for a batch of rates a) drives the solver
through the protocol of ``mgrit_nn/mgrit/propagator.py``. The MGRIT invariants are
pinned on the core: one level is serial time stepping, the solution to tolerance is the
serial one on every rank count, the residual history does not depend on the ranks,
iterations are flat in N, and the discrete solution converges to exp(a T) u0.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import WORLD
from mpi4py import MPI

from mgrit_nn.comm import Messenger
from mgrit_nn.config import MgritConfig
from mgrit_nn.mgrit import MGRIT, Chain, Level, Selection

RATES = torch.tensor([-1.0, -4.0, -0.25, 0.5], dtype=torch.float64)   # a, one per "sample"
T = 2.0


class Dahlquist:
    """Forward Euler for u' = a u: Phi_l(u) = (1 + a h M_l) u on level l (stride M_l)."""

    def __init__(self, N: int) -> None:
        self.h = T / N
        self.factors: list[torch.Tensor] = []

    def prepare(self, levels: list[Level]) -> None:
        self.factors = [1.0 + RATES * self.h * lev.stride for lev in levels]

    def step(self, level: int, sel: Selection, u: torch.Tensor, out: torch.Tensor) -> None:
        torch.mul(u, self.factors[level], out=out)


def solve(comm: MPI.Comm, N: int, **opts):
    """One MGRIT solve on ``comm``; (result, u_N broadcast to every rank)."""
    msg = Messenger(comm)
    chain = Chain.block(N, comm.Get_size())
    solver = MGRIT(chain, Dahlquist(N), msg, MgritConfig(**opts), torch.device("cpu"),
                   torch.float64, "Dahlquist")
    u0 = torch.ones_like(RATES)
    res = solver.solve(u0 if solver.first else None, tuple(RATES.shape))
    uN = solver.u[-1].clone() if solver.last else torch.empty_like(RATES)
    msg.bcast_tensor(uN, root=chain.ranks[-1])
    return res, uN


def serial(N: int) -> torch.Tensor:
    return (1.0 + RATES * T / N) ** N


@pytest.mark.parametrize("N", [3, 7, 64])          # N + 1 >= 4 points: one per rank
def test_one_level_is_serial_time_stepping(N):
    res, uN = solve(WORLD, N, levels=1)
    assert res.iters == 1 and res.residuals[-1] == 0.0
    assert torch.allclose(uN, serial(N), rtol=1e-13, atol=0)


@pytest.mark.parametrize("relax,cycle,cfactor", [("F", "V", 4), ("FCF", "V", 2),
                                                  ("FCF", "F", [2, 4])])
def test_multilevel_to_tolerance_is_the_serial_solution(relax, cycle, cfactor):
    res, uN = solve(WORLD, 256, relax=relax, cycle=cycle, cfactor=cfactor, tol=1e-13,
                    max_iter=50)
    assert res.residuals[-1] <= 1e-13 and res.iters < 50
    assert float((uN - serial(256)).abs().max()) < 1e-12     # the tolerance is absolute


def test_residual_history_does_not_depend_on_ranks():
    args = dict(N=250, relax="FCF", cfactor=4, tol=0.0, max_iter=6)
    dist, uN = solve(WORLD, **args)
    ref, uN_ref = solve(MPI.COMM_SELF, **args)
    assert dist.iters == ref.iters == 6
    for a, b in zip(dist.residuals, ref.residuals, strict=True):
        assert abs(a - b) <= 1e-12 * abs(b), (dist.residuals, ref.residuals)
    assert torch.allclose(uN, uN_ref, rtol=1e-13, atol=0)


def test_iterations_flat_in_N():
    iters = [solve(WORLD, N, relax="FCF", cfactor=4, tol=1e-10, max_iter=40)[0].iters
             for N in (64, 256, 1024, 4096)]
    assert max(iters) - min(iters) <= 1, iters
    assert max(iters) < 15, iters


def test_discrete_solution_converges_to_the_exact_one():
    """Forward Euler is first order: the error in u_N = exp(a T) halves with h."""
    exact = torch.exp(RATES * T)
    errs = [float((solve(WORLD, N, tol=1e-13, max_iter=50)[1] - exact).abs().max())
            for N in (256, 512, 1024)]
    ratios = [errs[i] / errs[i + 1] for i in range(2)]
    assert all(abs(r - 2.0) < 0.05 for r in ratios), (errs, ratios)
    assert errs[-1] < 1e-2 * math.exp(0.5 * T)
