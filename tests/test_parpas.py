"""parpas: the co-state regression (serial), and exact resume through the command line."""

from __future__ import annotations

import pytest
import torch
from test_failures import mpirun

from mgrit_nn.model.regression import Regression

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


def test_resume_on_other_rank_count_is_one_clear_error(tmp_path):
    _train(2, tmp_path / "run", steps=3)
    p = mpirun(3, ["-m", "mgrit_nn", "train", "configs/swissroll_parpas.yaml", "--out",
                   str(tmp_path / "run"), "--set", "train.steps=6", *SMALL,
                   "--resume", "latest"])
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("resume parpas on the same number of ranks") == 1, p.stderr
