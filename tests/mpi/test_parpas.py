"""parpas (Parpas & Muir): one sub-system is plain training; K sub-systems train, log the
regression MSE, agree on every rank; the prediction phase interpolates the coarse network."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from conftest import WORLD, ranks, sets
from mpi4py import MPI

from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer

pytestmark = pytest.mark.mpi

BASE = dict(data__name="swissroll", data__n_train=64, data__n_val=0, model__width=3,
            model__layers=16, model__T=4.0, train__steps=12, train__eval_every=0,
            train__lr=0.02, train__method="parpas")


def trainer(comm, **kw) -> Trainer:
    return Trainer(setup(None, sets(**{**BASE, **kw}), comm))


def column(t: Trainer, name: str) -> list[float]:
    return [r[name] for r in t.history]


@pytest.mark.parametrize("step,opt", [("euler", "adam"), ("verlet", "sgd")])
def test_one_subsystem_without_prediction_is_serial_training(step, opt):
    """K = 1, coarse_iters 0: the true co-state at the only boundary = plain gradient descent."""
    kw = dict(model__step=step, train__optimizer=opt, reg__theta=0.01)
    ref = trainer(MPI.COMM_SELF, **{**kw, "train__method": "serial"})
    ref.train(quiet=True)
    one = trainer(MPI.COMM_SELF, parpas__coarse_iters=0, **kw)
    one.train(quiet=True)
    a, b = column(one, "loss"), column(ref, "loss")
    assert len(a) == len(b) == 12
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= 1e-10 * abs(y), (x, y)
    assert all(math.isnan(v) for v in column(one, "regression_mse"))
    assert column(one, "train_accuracy") == column(ref, "train_accuracy")


def test_parpas_lr_is_the_local_corrections_rate_only():
    """parpas.lr: one sub-system without prediction at parpas.lr = serial training at
    train.lr = parpas.lr; serial training of the same config keeps train.lr (0.02)."""
    ref = trainer(MPI.COMM_SELF, train__method="serial", train__lr=0.005)
    ref.train(quiet=True)
    one = trainer(MPI.COMM_SELF, parpas__coarse_iters=0, parpas__lr=0.005)
    one.train(quiet=True)
    assert column(one, "lr") == [0.005] * 12
    for x, y in zip(column(one, "loss"), column(ref, "loss"), strict=True):
        assert abs(x - y) <= 1e-10 * abs(y), (x, y)
    serial = trainer(MPI.COMM_SELF, train__method="serial", parpas__lr=0.005)
    assert serial.opt.param_groups[0]["lr"] == 0.02


def test_prediction_interpolates_the_coarse_network():
    """After the prediction phase fine layers 2J and 2J+1 both hold the trained coarse layer
    J, and the first step's logged loss is that of the fine network with these weights."""
    kw = dict(parpas__coarse_iters=5, parpas__coarsen=2, model__step="verlet")
    t = trainer(MPI.COMM_SELF, **kw)
    net = t.method.net
    init = net.weight.detach().clone()
    t.method.start()
    K = net.weight.detach().clone()
    assert torch.equal(K[0::2], K[1::2])
    assert not torch.equal(K[0::2], init[0::2])           # trained, not just injected
    net.propagate(t.x)
    loss, _ = net.loss(t.y)
    again = trainer(MPI.COMM_SELF, **kw)
    again.train(quiet=True)
    assert abs(loss - again.history[0]["loss"]) <= 1e-12 * loss


@pytest.mark.parametrize("kw", [
    dict(model__step="verlet"),
    dict(model__step="verlet", data__batch_size=16, parpas__window=3),
    dict(model__step="euler", parpas__coarse_iters=0, parpas__per_class=False),
], ids=["verlet", "verlet-minibatch-window", "euler-single-level"])
def test_world_trains_and_logs_the_regression_mse(kw):
    t = trainer(WORLD, train__steps=20, **kw)
    t.train(quiet=True)
    loss, mse = column(t, "loss"), column(t, "regression_mse")
    rel = column(t, "regression_rel_mse")
    assert all(math.isfinite(v) for v in loss)
    if t.method.stage.K > 1:
        assert all(math.isfinite(v) and v >= 0 for v in mse + rel), (mse, rel)
    else:
        assert all(math.isnan(v) for v in mse)
    # every rank logged the same values (the diagnostics are reduced in rank order)
    got = torch.tensor(loss + mse, dtype=torch.float64)
    root = got.clone()
    WORLD.Bcast(root.numpy(), root=0)
    assert torch.equal(got.nan_to_num(-1.0), root.nan_to_num(-1.0))
    assert min(loss[5:]) < loss[0], loss


def test_bad_parpas_config_is_one_config_error():
    from mgrit_nn.config import ConfigError, load_config, validate

    for override, needle in [(dict(model__layers=15), "parpas.coarsen"),
                             (dict(train__optimizer="lbfgs"), "train.optimizer"),
                             (dict(parpas__window=-1), "parpas.window"),
                             (dict(parpas__coarse_lr=0), "parpas.coarse_lr")]:
        with pytest.raises(ConfigError, match=needle):
            validate(load_config(None, sets(**{**BASE, **override})), WORLD.Get_size())


CLI_SMALL = ["--set", "data.n_train=48", "--set", "data.n_val=16", "--set", "model.layers=16",
             "--set", "model.width=3", "--set", "parpas.coarse_iters=6", "--quiet"]


def _columns(out) -> dict[str, np.ndarray]:
    with h5py.File(out / "history.h5", "r") as f:
        return {k: f[f"steps/{k}"][()] for k in ("step", "loss", "regression_mse",
                                                   "train_accuracy")}


@ranks(2, 4)
def test_resume_through_the_command_is_bitwise(shared_tmp, train_command):
    """Checkpoint at step 6 (inputs, regression data, optimizer), resume, same bits; on 2
    ranks with mini-batches of 16, on 4 full batch."""
    batch = {2: 16, 4: 0}[WORLD.size]
    train = train_command("configs/swissroll_parpas.yaml", CLI_SMALL)
    d = ["--set", "checkpoint.every=6", "--set", f"data.batch_size={batch}"]
    train(shared_tmp / "straight", *d, steps=12)
    train(shared_tmp / "split", *d, steps=6)
    train(shared_tmp / "split", *d, "--resume", "latest", steps=12)
    a, b = _columns(shared_tmp / "straight"), _columns(shared_tmp / "split")
    assert list(b["step"]) == list(range(1, 13))
    for k in ("loss", "regression_mse", "train_accuracy"):
        assert np.array_equal(a[k], b[k]), (k, a[k], b[k])
    assert np.all(np.isfinite(a["regression_mse"]))
