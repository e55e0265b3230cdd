"""MGRIT forward solve: exactness, rank-count independence, multigrid scaling (issue 2)."""

from __future__ import annotations

import pytest
import torch
from conftest import WORLD, forward, rel, serial_uN
from mpi4py import MPI

pytestmark = pytest.mark.mpi

DENSE = dict(data__name="peaks")
CONV = dict(data__name="digits", model__kind="conv", model__channels=2)
VERLET = dict(model__step="verlet")


@pytest.mark.parametrize("step", ["euler", "verlet"])
@pytest.mark.parametrize("net", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("N", [63, 64, 257])
def test_one_level_is_serial_time_stepping(net, N, step):
    res, uN, run, _ = forward(WORLD, model__layers=N, mgrit__levels=1, model__step=step, **net)
    assert res.iters == 1
    assert res.residuals[0] < 1e-12
    assert rel(uN, serial_uN(run)) < 1e-10


@pytest.mark.parametrize("net", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("N,levels,relax,cycle", [
    (63, 2, "F", "V"), (64, 3, "FCF", "V"), (257, 10, "FCF", "F"), (257, 4, "FCFCF", "V"),
])
def test_multilevel_to_tolerance_reproduces_serial(net, N, levels, relax, cycle):
    res, uN, run, _ = forward(WORLD, model__layers=N, mgrit__levels=levels, mgrit__relax=relax,
                              mgrit__cycle=cycle, mgrit__tol=1e-12, mgrit__max_iter=60, **net)
    assert res.residuals[-1] <= 1e-12
    assert rel(uN, serial_uN(run)) < 1e-10


@pytest.mark.parametrize("net,N,levels,relax,cycle", [
    (DENSE, 63, 2, "F", "V"), (DENSE, 64, 3, "FCF", "V"), (DENSE, 257, 10, "FCF", "F"),
    (CONV, 63, 2, "F", "V"), (CONV, 64, 3, "FCF", "V"),
], ids=["dense-63", "dense-64", "dense-257", "conv-63", "conv-64"])
def test_verlet_multilevel_to_tolerance_reproduces_serial(net, N, levels, relax, cycle):
    """The two-part Verlet state through the unchanged MGRIT core (coarse levels: H_l)."""
    res, uN, run, _ = forward(WORLD, model__layers=N, mgrit__levels=levels, mgrit__relax=relax,
                              mgrit__cycle=cycle, mgrit__tol=1e-12, mgrit__max_iter=60,
                              **VERLET, **net)
    assert uN.shape[1:] == run.shapes.state
    assert res.residuals[-1] <= 1e-12
    assert rel(uN, serial_uN(run)) < 1e-10


@pytest.mark.parametrize("kw", [
    dict(model__layers=63, mgrit__relax="FCF"),
    dict(model__layers=64, mgrit__relax="F", mgrit__cycle="F", mgrit__init="copy"),
    dict(model__layers=257, mgrit__relax="FCFCF", mgrit__init="coarse"),
    dict(model__layers=40, mgrit__cfactor="[2, 4, 2]", mgrit__relax="[F, FCF]"),
    dict(model__layers=33, **CONV),
    dict(model__layers=63, mgrit__init="coarse", **VERLET),
    dict(model__layers=33, **CONV, **VERLET),
], ids=["63", "64F", "257", "40", "conv", "verlet", "verlet-conv"])
def test_residual_history_does_not_depend_on_ranks(kw):
    """The run on all ranks of WORLD against the same run on this rank alone (P = 1)."""
    args = dict(mgrit__max_iter=6, mgrit__tol=0.0, **kw)
    dist, uN, _, _ = forward(WORLD, **args)
    ref, uN_ref, _, _ = forward(MPI.COMM_SELF, **args)
    assert dist.iters == ref.iters == 6
    for a, b in zip(dist.residuals, ref.residuals, strict=True):
        assert abs(a - b) <= 1e-10 * abs(b)
    assert rel(uN, uN_ref) < 1e-12


def test_multigrid_iterations_flat_in_N():
    """Peaks, T fixed, FCF, cfactor 4, as many levels as fit: iterations to 1e-10 flat in N."""
    iters = {}
    for N in (64, 256, 1024):
        res, *_ = forward(WORLD, model__layers=N, model__width=8, mgrit__levels=10,
                          mgrit__relax="FCF", mgrit__cfactor=4, mgrit__tol=1e-10,
                          mgrit__max_iter=40, data__n_train=20)
        assert res.residuals[-1] <= 1e-10
        iters[N] = res.iters
    assert max(iters.values()) - min(iters.values()) <= 2, iters


def test_ranks_without_coarse_points():
    """N = 7 on up to 4 ranks with cfactor 4: some ranks own no C-point on level 1."""
    res, uN, run, net = forward(WORLD, model__layers=7, mgrit__levels=2, mgrit__min_coarse=1,
                                mgrit__tol=1e-13, mgrit__max_iter=10)
    assert len(net.solver.levels) == 2
    assert res.residuals[-1] <= 1e-13
    assert rel(uN, serial_uN(run)) < 1e-10


def c_points(net):
    """A warm start from the current solution: its level-0 C-points (MGRIT.warm_rows)."""
    rows, _ = net.solver.warm_rows()
    return rows, net.solver.u.index_select(0, rows)


def test_warm_start_from_solution_converges_at_once():
    res, _, run, net = forward(WORLD, model__layers=64, mgrit__tol=1e-12, mgrit__max_iter=40)
    again = net.solve_forward(run.data.x_train.to(run.dtype), warm=c_points(net))
    assert again.iters == 1 and again.residuals[0] < 1e-11


def test_float32_runs_and_is_close():
    res, uN, run, _ = forward(WORLD, model__layers=64, runtime__dtype="float32",
                              mgrit__tol=1e-5, mgrit__max_iter=20)
    assert uN.dtype == torch.float32
    assert rel(uN.double(), serial_uN(run).double()) < 1e-5


def test_work_counter_counts_every_step_once():
    """One level: a sequential sweep (N steps) plus the residual at the C-points (N/4)."""
    res, _, run, net = forward(WORLD, model__layers=64, mgrit__levels=1)
    total = run.msg.allreduce_sum(float(net.solver.stats.steps))
    assert total == 64 + 16
    assert {"prepare", "init", "coarse", "residual"} <= set(net.solver.stats.seconds)


@pytest.mark.parametrize("step", ["euler", "verlet"])
def test_stage_pipeline_is_serial_forward(step):
    """Stage.forward on every rank in turn (interface messages) reproduces u_N."""
    from mgrit_nn.model.stage import Stage

    _, uN_ref, run, net = forward(WORLD, model__layers=13, mgrit__levels=1, model__step=step)
    st = Stage(net)
    x = run.data.x_train.to(run.dtype)
    with torch.no_grad():
        if st.first:
            inp = x
        else:
            inp = torch.empty(st.state_shape(len(x)), dtype=run.dtype)
            st.recv_left(inp).wait()
        out = st.forward(inp)
        send = st.send_right(out)
        if send is not None:
            send.wait()
    uN = torch.empty_like(uN_ref)
    if st.last:
        uN.copy_(out)
    run.msg.bcast_tensor(uN, root=net.chain.ranks[-1])
    assert rel(uN, uN_ref) < 1e-13


@pytest.mark.parametrize("cycle", ["V", "F"])
def test_skip_first_down_cycle(cycle):
    """mgrit.skip: the first iteration does no down-cycle work, the solve still reaches the
    serial states, and iteration 1 costs fewer step applications than without skip."""
    kw = dict(model__layers=64, mgrit__levels=3, mgrit__cycle=cycle, mgrit__relax="FCF")
    res, uN, run, net = forward(WORLD, mgrit__skip="true", **kw)
    assert res.residuals[-1] <= 1e-10 and rel(uN, serial_uN(run)) < 1e-10
    work = []
    for skip in ("false", "true"):
        _, _, _, one = forward(WORLD, mgrit__skip=skip, mgrit__max_iter=1, **kw)
        work.append(one.solver.msg.allreduce_sum(one.solver.stats.steps))
    assert work[1] < work[0], work


@pytest.mark.parametrize("relax,saved", [("F", 1.0), ("FCF", 0.75)])
@pytest.mark.parametrize("cycle", ["V", "F"])
def test_no_redundant_sweeps_between_iterations(relax, saved, cycle):
    """From the second iteration on, level 0's first F-relaxation is left out (the iterate
    is F-relaxed) and with F-relaxation the restriction reuses the stopping test's residual:
    iteration k >= 2 costs ``saved`` fine sweeps less than the first. Nothing changes:
    iteration 3 gives the residual of one full (nothing left out) iteration warm-started
    from the 2-iteration iterate."""
    N, kw = 64, dict(model__layers=64, mgrit__levels=3, mgrit__relax=relax,
                     mgrit__cycle=cycle, mgrit__tol=0.0)
    steps, res = {}, {}
    for k in (1, 2, 3):
        res[k], _, run, net = forward(WORLD, mgrit__max_iter=k, **kw)
        steps[k] = run.msg.allreduce_sum(float(net.solver.stats.steps))
    first, later = steps[1], steps[2] - steps[1]
    assert steps[3] - steps[2] == later
    assert first - later == saved * N
    _, _, run, net = forward(WORLD, mgrit__max_iter=2, **kw)
    again = net.solve_forward(run.data.x_train.to(run.dtype), warm=c_points(net), max_iter=1)
    assert abs(again.residuals[0] - res[3].residuals[2]) <= 1e-14 * res[3].residuals[2]
