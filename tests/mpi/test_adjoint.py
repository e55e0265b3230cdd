"""MGRIT adjoint and gradients: exactness, finite differences, rank independence (issue 3)."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL, WORLD, gradients, sets
from mpi4py import MPI

from mgrit_nn.setup_run import setup

pytestmark = pytest.mark.mpi

DENSE = dict(data__name="peaks")
CONV = dict(data__name="digits", model__kind="conv", model__channels=2, data__n_train=12)
TIGHT = dict(mgrit__tol=1e-12, mgrit__max_iter=80)
VERLET = dict(model__step="verlet")


@pytest.mark.parametrize("net", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("N,levels,relax", [
    (64, 1, "FCF"), (63, 2, "F"), (64, 3, "FCF"), (257, 4, "F"), (257, 4, "FCF"),
])
def test_gradient_equals_serial_autograd(net, N, levels, relax):
    err, worst, fwd, adj, *_ = gradients(WORLD, model__layers=N, mgrit__levels=levels,
                                         mgrit__relax=relax, **TIGHT, **net)
    assert fwd.residuals[-1] <= 1e-12 and adj.residuals[-1] <= 1e-12
    assert err < 1e-10, err
    assert worst < 1e-8, worst


@pytest.mark.parametrize("net,N,levels,relax", [
    (DENSE, 64, 1, "FCF"), (DENSE, 63, 2, "F"), (DENSE, 257, 4, "FCF"),
    (CONV, 64, 1, "FCF"), (CONV, 64, 3, "FCF"),
], ids=["dense-64-1", "dense-63-2", "dense-257-4", "conv-64-1", "conv-64-3"])
def test_verlet_gradient_equals_serial_autograd(net, N, levels, relax):
    """Hand-derived transposed Verlet steps on every level, parameter gradients on level 0."""
    err, worst, fwd, adj, *_ = gradients(WORLD, model__layers=N, mgrit__levels=levels,
                                         mgrit__relax=relax, **TIGHT, **VERLET, **net)
    assert fwd.residuals[-1] <= 1e-12 and adj.residuals[-1] <= 1e-12
    assert err < 1e-10, err
    assert worst < 1e-8, worst


@pytest.mark.parametrize("step", ["euler", "verlet"])
@pytest.mark.parametrize("N", [7, 63])
def test_gradient_with_tikhonov_terms(N, step):
    err, worst, *_ = gradients(WORLD, model__layers=N, reg__theta=0.1, reg__ddt=0.01,
                               reg__classifier=0.1, reg__opening=0.2, mgrit__min_coarse=1,
                               model__step=step, **TIGHT)
    assert err < 1e-10 and worst < 1e-8, (err, worst)


def test_gradient_when_a_rank_holds_no_layer():
    """N = 3 on 4 ranks: rank 0 owns only point 0 and no layer; it must still take part."""
    err, worst, *_ = gradients(WORLD, model__layers=3, mgrit__levels=1, reg__ddt=0.01, **TIGHT)
    assert err < 1e-10 and worst < 1e-8, (err, worst)


@pytest.mark.parametrize("step", ["euler", "verlet"])
@pytest.mark.parametrize("act", ["relu", "softplus"])
def test_gradient_other_activations(act, step):
    err, worst, *_ = gradients(WORLD, model__layers=40, model__activation=act, model__step=step,
                               **TIGHT)
    assert err < 1e-10 and worst < 1e-8, (err, worst)


def test_adjoint_options_are_separate():
    err, _, fwd, adj, _, net = gradients(WORLD, model__layers=64, adjoint__cfactor=2,
                                         adjoint__relax="F", adjoint__cycle="F", **TIGHT)
    assert net.adjoint.levels[1].stride == 2 and net.solver.levels[1].stride == 4
    assert err < 1e-10


@pytest.mark.parametrize("step", ["euler", "verlet"])
def test_finite_difference_directional_derivative(step):
    """Central differences of the MGRIT loss along a random direction vs. <g, d>."""
    run = setup(None, sets(data__n_train=16, data__n_val=0, model__width=4, model__layers=48,
                           model__step=step, **TIGHT), WORLD)
    net = run.network()
    x, y = run.data.x_train.to(run.dtype), run.data.y_train
    loss = net(x, y)
    loss.backward()
    params = net.local_parameters()
    gen = torch.Generator().manual_seed(1234 + run.msg.rank)
    dirs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    slope = run.msg.allreduce_sum(sum(float((p.grad * d).sum()) for p, d in
                                      zip(params, dirs, strict=True)))
    eps, values = 1e-5, []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.add_(sign * eps * d)
        net.solve_forward(x)
        values.append(net.loss(y)[0])
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.sub_(sign * eps * d)
    fd = (values[0] - values[1]) / (2 * eps)
    assert abs(fd - slope) <= 1e-6 * abs(slope), (fd, slope)


@pytest.mark.parametrize("kw", [
    dict(model__layers=63, mgrit__relax="FCF"),
    dict(model__layers=40, mgrit__relax="F", mgrit__cycle="F", mgrit__cfactor="[2, 4]"),
    dict(model__layers=33, **CONV),
    dict(model__layers=63, mgrit__relax="FCF", **VERLET),
    dict(model__layers=33, **CONV, **VERLET),
], ids=["63", "40F", "conv", "verlet", "verlet-conv"])
def test_adjoint_residual_history_does_not_depend_on_ranks(kw):
    args = dict(mgrit__max_iter=5, mgrit__tol=0.0, **kw)
    _, _, _, dist, _, net = gradients(WORLD, **args)
    _, _, _, ref, _, _ = gradients(MPI.COMM_SELF, **args)
    assert dist.iters == ref.iters == 5
    for a, b in zip(dist.residuals, ref.residuals, strict=True):
        assert abs(a - b) <= 1e-10 * abs(b)


def test_adjoint_iterations_flat_in_N():
    iters = {}
    for N in (64, 256, 1024):
        _, _, _, adj, *_ = gradients(WORLD, model__layers=N, model__width=8, mgrit__tol=1e-10,
                                     mgrit__max_iter=40, mgrit__relax="FCF",
                                     data__n_train=20)
        assert adj.residuals[-1] <= 1e-10
        iters[N] = adj.iters
    assert max(iters.values()) - min(iters.values()) <= 2, iters


def test_optimizer_step_on_local_parameters():
    """Any torch.optim optimizer works on each rank's parameters after loss.backward()."""
    run = setup(None, sets(data__n_train=16, data__n_val=0, model__width=4, model__layers=32,
                           **TIGHT), WORLD)
    net = run.network()
    x, y = run.data.x_train.to(run.dtype), run.data.y_train
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    first = net(x, y)
    first.backward()
    opt.step()
    opt.zero_grad()
    second = net(x, y)
    assert second.item() < first.item()


@pytest.mark.parametrize("step", ["euler", "verlet"])
def test_gradient_after_the_batch_size_changes(step):
    """The solvers keep their views of level storage, workspace rows, weights and the
    linearization from solve to solve (no slicing per step); a new batch size reallocates
    the storage and must drop them: alternating batch sizes, every gradient is still serial
    autograd's."""
    from mgrit_nn.commands.check import gradient_errors

    run = setup(None, sets(**{**SMALL, "model__layers": 63, "mgrit__levels": 3,
                              "model__step": step, **TIGHT}), WORLD)
    net = run.network()
    for n in (24, 10, 24, 10):
        x, y = run.data.x_train[:n].to(run.dtype), run.data.y_train[:n]
        net.solve_forward(x)
        err, worst = gradient_errors(run, net, net.backprop(x, y), x, y)
        assert err < 1e-10 and worst < 1e-8, (n, err, worst)
        for solver in (net.solver, net.adjoint):    # and nothing keeps old storage alive
            assert all(any(x is s for s in solver._stores) for _, x, _ in
                       solver._views.values())
