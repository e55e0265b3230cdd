"""Helpers for tests that run under ``mpiexec -n P python -m pytest --with-mpi tests/mpi``.

Every assertion is made on values all ranks share (broadcast first), so a
failure fails on every rank at once and never leaves ranks waiting.
"""

from __future__ import annotations

import pytest
import torch
from mpi4py import MPI

from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.runtime import node_ranks
from mgrit_nn.setup_run import setup

WORLD = MPI.COMM_WORLD
node_ranks()            # collective on first call: every rank, before any sub-communicator


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """No "MPI Information" block (20 lines per rank) at the end of every run: pytest-mpi
    prints it when its plugin object's flag is set in its own pytest_configure, before this."""
    import pytest_mpi

    for plugin in config.pluginmanager.get_plugins():
        if isinstance(plugin, pytest_mpi.MPIPlugin):
            plugin._is_testing_mpi = False


def sets(**kw) -> list[str]:
    """``sets(model__layers=63)`` -> ``["model.layers=63"]``."""
    return [f"{k.replace('__', '.')}={v}" for k, v in kw.items()]


SMALL = dict(data__n_train=24, data__n_val=0, model__width=4)


def forward(comm: MPI.Comm, **kw):
    """MGRIT forward on ``comm``; returns (result, u_N on every rank, run, net)."""
    run = setup(None, sets(**{**SMALL, **kw}), comm)
    net = run.network()
    x = run.data.x_train.to(run.dtype)
    res = net.solve_forward(x)
    uN = torch.empty((x.shape[0],) + run.shapes.state, dtype=run.dtype)
    if net.last:
        uN.copy_(net.final_state())
    run.msg.bcast_tensor(uN, root=net.chain.ranks[-1])
    return res, uN, run, net


def serial_uN(run) -> torch.Tensor:
    ref = SerialResNet(run.cfg.model, run.shapes, run.dtype)
    with torch.no_grad():
        return ref.states(run.data.x_train.to(run.dtype))[-1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def gradients(comm: MPI.Comm, fwd_iters=None, adj_iters=None, **kw):
    """Forward + adjoint MGRIT on ``comm``; errors against serial autograd, on every rank.

    Returns (grad_rel_err, grad_max_rel_err, forward result, adjoint result, run, net).
    """
    from mgrit_nn.commands.check import gradient_errors

    run = setup(None, sets(**{**SMALL, **kw}), comm)
    net = run.network()
    x, y = run.data.x_train.to(run.dtype), run.data.y_train
    fwd = net.solve_forward(x, max_iter=fwd_iters)
    adj_kw = {} if adj_iters is None else {"max_iter": adj_iters}
    err, worst = gradient_errors(run, net, net.backprop(x, y, **adj_kw), x, y)
    return err, worst, fwd, net.adj_result, run, net
