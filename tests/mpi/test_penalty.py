"""penalty / al stage-parallel training (issue 6), on 1-4 ranks.

The distributed method is checked against a one-process reference written from the
paper's Algorithm 1 with the serial network (no Stage, no messages): same partition,
same local losses, same corrections, so every message and sign is exercised.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import WORLD, sets
from mpi4py import MPI

from mgrit_nn.methods.penalty import beta_tau
from mgrit_nn.mgrit import Chain
from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer

pytestmark = pytest.mark.mpi

BASE = dict(data__name="levelset", data__n_train=40, data__n_val=20, model__width=4,
            model__layers=12, train__steps=6, train__eval_every=0, train__lr=0.1,
            train__optimizer="sgd", train__momentum=0.0, penalty__lr_lambda=0.5,
            penalty__beta_milestones="[3]", penalty__inner_max=2, penalty__lr_kappa=0.5)


def trainer(comm, **kw) -> Trainer:
    return Trainer(setup(None, sets(**{**BASE, **kw}), comm))


def gathered(tr: Trainer) -> torch.Tensor:
    m = tr.method
    flat = m.gather_flat(m.local_flat(tr.params))
    return tr.run.msg.comm.bcast(flat, root=0)


def reference(method: str, P: int, steps: int, run, **kw) -> tuple[torch.Tensor, list[float]]:
    """Algorithm 1 on one process: the global flat weights after ``steps`` and the losses."""
    cfg = run.cfg
    net = SerialResNet(cfg.model, run.shapes)
    starts = Chain.block(cfg.model.layers, P).starts
    # stage k runs the layers into its points lo_k..hi_k; its input is point lo_k - 1
    layers = [range(max(starts[k], 1) - 1, starts[k + 1] - 1) for k in range(P)]
    x, y = run.data.x_train.double(), run.data.y_train
    B, n = len(x), cfg.model.width
    with torch.no_grad():
        states = net.states(x)
    lam = {k: states[starts[k] - 1].clone() for k in range(1, P)}
    kap = {k: torch.zeros_like(lam[k]) for k in range(1, P)}
    pe, lr, losses = cfg.penalty, cfg.train.lr, []
    tc = cfg.train
    for t in range(1, steps + 1):
        beta, tau = beta_tau(pe, t)
        # train.schedule (step): lr_t; literal [schedule] scales the lambda and kappa steps too
        lr_t = lr * tc.factor ** sum(m <= t - 1 for m in tc.milestones) \
            if tc.schedule == "step" else lr
        dual = lr_t / lr if "schedule" in pe.literal else 1.0
        ends, grads_in = {}, {}
        params = list(net.parameters())
        for p in params:
            p.grad = None
        for k in range(P):
            inp = net.act(net.opening(x)) if k == 0 else lam[k].clone().requires_grad_()
            u = inp
            for j in layers[k]:
                u = u + net.h * net.act(net.layers[j](u))
            ends[k] = u.detach()
            if k == P - 1:
                local = F.cross_entropy(net.classifier(u), y)
            else:
                local = beta / (B * n) * ((lam[k + 1] - u) ** 2).sum()
                if method == "al":
                    local = local + (kap[k + 1] * u).sum() / B
            local.backward()
            if k > 0:
                grads_in[k] = B * inp.grad
        with torch.no_grad():
            u = states[0] = net.act(net.opening(x))
            for layer in net.layers:
                u = u + net.h * net.act(layer(u))
            losses.append(F.cross_entropy(net.classifier(u), y).item())
            for p in params:
                p -= lr_t * p.grad
            for k in range(1, P):
                lm, kp, xp = lam[k], kap[k], ends[k - 1]
                it = 0
                while it == 0 or (float(((lm - xp) ** 2).mean()) > tau and it < pe.inner_max):
                    a, eta = 2 * beta / n, pe.lr_lambda * dual
                    curv = a if k == P - 1 else 2 * a
                    g = a * (lm - xp) + grads_in[k] - (kp if method == "al" else 0)
                    lm = lm - eta / (1 + eta * curv) * g
                    if method == "al":
                        kp = kp - dual * pe.lr_kappa * 2 * beta / n * (lm - xp)
                    it += 1
                lam[k], kap[k] = lm, kp
    flat = [net.opening.weight.flatten(), net.opening.bias.flatten()]
    for layer in net.layers:
        flat += [layer.weight.flatten(), layer.bias.flatten()]
    flat += [net.classifier.weight.flatten(), net.classifier.bias.flatten()]
    return torch.cat(flat).detach(), losses


@pytest.mark.parametrize("method", ["penalty", "al"])
def test_one_stage_is_serial_training(method):
    """K = 1: the only stage is the whole network; losses equal serial training to 1e-12."""
    kw = dict(reg__theta=0.01, reg__ddt=0.01, train__optimizer="adam", train__lr=0.01)
    serial = trainer(MPI.COMM_SELF, train__method="serial", **kw)
    serial.train(quiet=True)
    one = trainer(MPI.COMM_SELF, train__method=method, **kw)
    one.train(quiet=True)
    for a, b in zip(one.history, serial.history, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-12 * abs(b["loss"]), (a["loss"], b["loss"])


SCHEDULED = dict(train__schedule="step", train__milestones="[2, 4]", train__factor=0.5)


@pytest.mark.parametrize("method,kw", [
    ("penalty", {}), ("al", {}),
    ("al", SCHEDULED),                                            # the weights' lr only
    ("al", {**SCHEDULED, "penalty__literal": "[schedule]"}),      # lambda and kappa too
])
def test_matches_one_process_algorithm(method, kw):
    """Weights and honest losses of the distributed method == the one-process reference."""
    tr = trainer(WORLD, train__method=method, **kw)
    tr.train(quiet=True)
    ref, ref_losses = reference(method, WORLD.Get_size(), 6, tr.run)
    got = gathered(tr)
    assert torch.max(torch.abs(got - ref)) <= 1e-12 * torch.max(torch.abs(ref))
    assert np.allclose([r["loss"] for r in tr.history], ref_losses, rtol=1e-12, atol=0)


def test_violation_falls_as_beta_rises():
    """Constraint violation at the end of each beta phase falls as beta rises (K >= 2)."""
    if WORLD.Get_size() == 1:
        pytest.skip("one stage has no interface")
    tr = trainer(WORLD, train__method="penalty", train__steps=60, penalty__beta=0.1,
                 penalty__beta_milestones="[20, 40]", penalty__inner_max=1,
                 penalty__lr_lambda=0.5, train__optimizer="adam", train__lr=0.01)
    tr.train(quiet=True)
    v = [r["violation"] for r in tr.history]
    ends = [v[19], v[39], v[59]]
    assert ends[0] > 0 and ends[1] < ends[0] and ends[2] < ends[1], ends
    assert [r["beta"] for r in tr.history][::20] == pytest.approx([0.1, 1.0, 10.0])


def test_messages_are_interface_sized():
    """Per step a stage sends lambda (and kappa) left and X_end right: B x state each."""
    tr = trainer(WORLD, train__method="al", penalty__honest_every=0, train__steps=3)
    msg = tr.run.msg
    before = msg.sent_bytes
    for k in range(1, 4):
        tr.step(k)
    st = tr.method.stage
    per_state = 40 * 4 * 8
    expected = 3 * per_state * ((st.right is not None) + 2 * (st.left is not None))
    assert msg.comm.allgather(msg.sent_bytes - before - expected) == [0] * WORLD.Get_size()


def test_resume_is_exact(tmp_path):
    """Checkpoint at step 3 (lambda, kappa, step counter), resume: same losses bitwise."""
    from mgrit_nn.train.checkpoint import restore, save

    out = WORLD.bcast(str(tmp_path), root=0)
    kw = dict(train__method="al", penalty__noise=0.01)
    straight = trainer(WORLD, **kw)
    straight.train(quiet=True)
    first = trainer(WORLD, **kw, train__steps=3)
    first.train(quiet=True)
    save(first, __import__("pathlib").Path(out), 3)
    WORLD.Barrier()
    second = trainer(WORLD, **kw)
    start = restore(second, f"{out}/checkpoints/step_00000003.h5")
    second.train(quiet=True, start=start)
    a = [r["loss"] for r in straight.history][3:]
    b = [r["loss"] for r in second.history]
    assert a == b
    assert [r["violation"] for r in straight.history][3:] == [r["violation"]
                                                              for r in second.history]


def test_memory_mapped_lambda_and_kappa_train_bit_for_bit(tmp_path_factory):
    """``penalty.store: mmap`` (the store facility the warm starts share): al's lambda and
    kappa over a mapped file, deleted once mapped; the same losses as in memory."""
    folder = WORLD.bcast(str(tmp_path_factory.mktemp("lam")) if WORLD.rank == 0 else None)
    runs = []
    for store in ("memory", "mmap"):
        tr = trainer(WORLD, train__method="al", train__steps=6, penalty__store=store,
                     penalty__store_dir=folder)
        tr.train(quiet=True)
        runs.append([r["loss"] for r in tr.history])
    assert runs[0] == runs[1]
    WORLD.Barrier()
    assert not os.listdir(folder)
