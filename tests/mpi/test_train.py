"""Training: exact mgrit == serial, oneshot learns, optimizers, data replicas (issue 4)."""

from __future__ import annotations

import pytest
import torch
from conftest import WORLD, sets
from mpi4py import MPI

from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer

pytestmark = pytest.mark.mpi

BASE = dict(data__name="peaks", data__n_train=64, data__n_val=32, model__width=6,
            model__layers=24, train__steps=20, train__eval_every=0, train__lr=0.01)


def curve(comm, **kw) -> tuple[list[float], dict]:
    trainer = Trainer(setup(None, sets(**{**BASE, **kw}), comm))
    result = trainer.train(quiet=True)
    return [r["loss"] for r in trainer.history], result


@pytest.mark.parametrize("opt,step", [("adam", "euler"), ("sgd", "euler"), ("adam", "verlet")])
def test_mgrit_follows_serial_loss_curve(opt, step):
    """Exact gradients give the serial iterates: loss curves equal to 1e-8 for 20 steps."""
    serial, _ = curve(MPI.COMM_SELF, train__method="serial", train__optimizer=opt,
                      model__step=step)
    exact, _ = curve(WORLD, train__method="mgrit", train__optimizer=opt, mgrit__tol=1e-13,
                     mgrit__max_iter=60, model__step=step)
    assert len(exact) == len(serial) == 20
    for a, b in zip(exact, serial, strict=True):
        assert abs(a - b) <= 1e-8 * abs(b), (a, b)


def test_float32_exact_mgrit_stops_at_the_rounding_floor_and_follows_serial():
    """The training default, float32: tol 1e-10 is out of float32's reach, so each exact solve
    stops at 10 eps ||u_C|| (not after max_iter), and the loss curve is serial float32's to
    float32 accuracy."""
    serial, _ = curve(MPI.COMM_SELF, train__method="serial", runtime__dtype="float32")
    trainer = Trainer(setup(None, sets(**{**BASE, "train__method": "mgrit", "mgrit__tol": 1e-10,
                                          "mgrit__max_iter": 40, "runtime__dtype": "float32"}),
                            WORLD))
    trainer.train(quiet=True)
    assert trainer.run.dtype == torch.float32
    iters = [r["fwd_iters"] for r in trainer.history] + [r["adj_iters"] for r in trainer.history]
    assert max(iters) < 40 and min(iters) >= 2
    exact = [r["loss"] for r in trainer.history]
    for a, b in zip(exact, serial, strict=True):
        assert abs(a - b) <= 1e-4 * abs(b), (a, b)


@pytest.mark.parametrize("kw", [
    dict(train__optimizer="adam"),
    dict(train__optimizer="sgd", train__lr=0.1, data__batch_size=16,
         train__schedule="step", train__milestones="[10]"),
    dict(train__optimizer="adam", train__schedule="cosine", mgrit__relax="F",
         train__warm_start=False),
    dict(train__optimizer="adam", model__step="verlet"),
])
def test_oneshot_loss_decreases(kw):
    losses, result = curve(WORLD, train__method="oneshot", **kw)
    assert result["fwd_iters_per_step"] == 2 and result["adj_iters_per_step"] == 2
    assert losses[-1] < 0.9 * losses[0], losses


def test_lbfgs_full_batch():
    losses, result = curve(WORLD, train__method="mgrit", train__optimizer="lbfgs", train__lr=1.0,
                           train__steps=10)
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.8 * losses[0], losses


def test_serial_lbfgs_matches_mgrit_lbfgs():
    serial, _ = curve(MPI.COMM_SELF, train__method="serial", train__optimizer="lbfgs",
                      train__lr=1.0, train__steps=8)
    exact, _ = curve(WORLD, train__method="mgrit", train__optimizer="lbfgs", train__lr=1.0,
                     train__steps=8, mgrit__tol=1e-13, mgrit__max_iter=60)
    for a, b in zip(exact, serial, strict=True):
        assert abs(a - b) <= 1e-8 * abs(b), (a, b)


@pytest.mark.skipif(WORLD.Get_size() % 2 != 0, reason="needs an even number of ranks")
@pytest.mark.parametrize("method", ["oneshot", "mgrit"])
def test_two_replicas_equal_one_replica(method):
    """D = 2 replicas x L layer ranks == 1 replica x L layer ranks on the full batch."""
    L = WORLD.Get_size() // 2
    kw = dict(train__method=method, train__steps=8, mgrit__tol=1e-13, mgrit__max_iter=60)
    both, _ = curve(WORLD, parallel__data_replicas=2, **kw)
    half = WORLD.Split(0 if WORLD.Get_rank() < L else 1, WORLD.Get_rank())
    single, _ = curve(half, **kw)          # each half runs the one-replica job on its own
    for a, b in zip(both, single, strict=True):
        assert abs(a - b) <= 1e-10 * abs(b), (a, b)
    half.Free()
