"""parpas: the co-state regression (serial), and exact resume through the command line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_failures import mpirun

from mgrit_nn.config import ModelConfig
from mgrit_nn.model.init import shapes
from mgrit_nn.model.regression import Regression
from mgrit_nn.model.serial import SerialResNet

_spec = importlib.util.spec_from_file_location(
    "parpas_costate_fit", Path(__file__).resolve().parents[1] / "benchmarks/parpas_costate_fit.py")
costate_fit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(costate_fit)

SMALL = ["--set", "data.n_train=48", "--set", "data.n_val=16", "--set", "model.layers=16",
         "--set", "model.width=3", "--set", "parpas.coarse_iters=6", "--quiet"]


def _linear_data(n: int, d: int, groups: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(groups, d, d, generator=g, dtype=torch.float64)
    B = torch.randn(groups, d, generator=g, dtype=torch.float64)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    lab = torch.randint(groups, (n,), generator=g)
    P = torch.einsum("nij,nj->ni", A[lab], X) + B[lab]
    return X, P, lab


@pytest.mark.parametrize("groups", [1, 3])
def test_regression_recovers_an_exact_linear_map(groups):
    X, P, lab = _linear_data(300, 4, groups)
    r = Regression(4, groups, ridge=0.0, window=0)
    assert torch.equal(r.predict(X, lab), torch.zeros_like(P))     # no data: zero
    for rows in torch.arange(300).split(50):                       # six observations
        r.add(X[rows], P[rows], lab[rows])
    assert len(r.blocks) == 1
    assert (r.predict(X, lab) - P).abs().max() < 1e-10


def test_regression_window_forgets_old_pairs_and_ridge_shrinks():
    X, P, lab = _linear_data(200, 3, 1, seed=1)
    old = -P                                               # a different map, observed first
    r = Regression(3, 1, ridge=0.0, window=2)
    r.add(X[:100], old[:100], lab[:100])
    for rows in (torch.arange(100, 150), torch.arange(150, 200)):
        r.add(X[rows], P[rows], lab[rows])
    assert len(r.blocks) == 2                              # the first observation is gone
    assert (r.predict(X, lab) - P).abs().max() < 1e-10
    strong = Regression(3, 1, ridge=1e6, window=0)
    strong.add(X, P, lab)
    A = strong.W[0, :3]
    assert A.abs().max() < 1e-4                            # ridge on A only, not on B
    assert (strong.W[0, 3] - P.mean(0)).abs().max() < 1e-3


def test_regression_group_without_pairs_predicts_zero():
    X, P, lab = _linear_data(60, 2, 1, seed=2)
    r = Regression(2, 3, ridge=1e-8, window=0)
    r.add(X, P, torch.zeros_like(lab))                     # only group 0 observed
    other = torch.full_like(lab, 2)
    assert torch.equal(r.predict(X, other), torch.zeros_like(P))
    assert (r.predict(X, torch.zeros_like(lab)) - P).abs().max() < 1e-6


def _train(n: int, out, *args: str, steps: int = 12):
    p = mpirun(n, ["-m", "mgrit_nn", "train", "configs/swissroll_parpas.yaml", "--out",
                   str(out), "--set", f"train.steps={steps}", *SMALL, *args])
    assert p.returncode == 0, p.stderr
    return p


# resume bitwise on the same ranks: tests/mpi/test_parpas.py


@pytest.mark.parametrize("step", ["euler", "verlet"])
def test_interface_pairs_are_the_per_sample_costates(step):
    """benchmarks/parpas_costate_fit.py's exact pairs: the states at the point, and co-states
    whose product with any direction is the directional derivative of the summed loss."""
    m = ModelConfig(kind="dense", step=step, layers=6, width=3, T=1.0)
    net = SerialResNet(m, shapes(m, (2,), 3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    X, P = costate_fit.interface_pairs(net, net.states(x), y, 2)
    u2 = net.states(x)[2]
    assert torch.equal(X, u2.flatten(1))
    assert torch.equal(net.steps(u2, 2)[-1], net.states(x)[-1])

    def loss(Xf):
        with torch.no_grad():
            return float(F.cross_entropy(net.head(net.steps(Xf.view_as(u2), 2)[-1]), y,
                                         reduction="sum"))
    v = torch.randn(X.shape, generator=g, dtype=torch.float64)
    eps = 1e-6
    fd = (loss(X + eps * v) - loss(X - eps * v)) / (2 * eps)
    assert abs(fd - float((P * v).sum())) < 1e-7 * max(1.0, abs(fd))
    # per sample: moving one sample's state changes only its own loss term
    w = torch.zeros_like(v)
    w[3] = v[3]
    fd3 = (loss(X + eps * w) - loss(X - eps * w)) / (2 * eps)
    assert abs(fd3 - float((P[3] * v[3]).sum())) < 1e-7 * max(1.0, abs(fd3))


def test_resume_on_other_rank_count_is_one_clear_error(tmp_path):
    _train(2, tmp_path / "run", steps=3)
    p = mpirun(3, ["-m", "mgrit_nn", "train", "configs/swissroll_parpas.yaml", "--out",
                   str(tmp_path / "run"), "--set", "train.steps=6", *SMALL,
                   "--resume", "latest"])
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("resume parpas on the same number of ranks") == 1, p.stderr
