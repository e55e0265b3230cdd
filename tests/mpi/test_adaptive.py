"""The one-shot method's adaptive iteration counts (issue 16, ``oneshot.check_every``): a
check takes the exact gradient, measures the one-shot gradient's relative error against
it, steps along the exact one, and raises both counts when the error is too large."""

from __future__ import annotations

import pytest
import torch
from conftest import WORLD, sets

from mgrit_nn.commands.bench import bench_batch
from mgrit_nn.methods.base import Batch
from mgrit_nn.methods.layer_parallel import LayerParallelMethod
from mgrit_nn.setup_run import setup

pytestmark = pytest.mark.mpi

# mini-batches of a larger set: cold first visits, the regime where one iteration errs
BASE = dict(data__name="peaks", data__n_train=40, data__n_val=0, model__width=4,
            model__layers=32, model__T=4.0, runtime__dtype="float64",
            train__method="oneshot", train__fwd_iters=1, train__adj_iters=1)


def grads(method, batch) -> list[torch.Tensor]:
    info = method.step(batch)
    return info, [p.grad.clone() for p in method.parameters()]


def relative_error(g, e) -> float:
    num = WORLD.allreduce(sum(float(((a - b) ** 2).sum()) for a, b in zip(g, e, strict=True)))
    den = WORLD.allreduce(sum(float((b ** 2).sum()) for b in e))
    return (num / den) ** 0.5


@pytest.mark.parametrize("max_error", [1e-12, 1e12])
def test_a_check_steps_along_the_exact_gradient_and_raises_the_counts(max_error):
    run = setup(None, sets(**BASE, oneshot__check_every=2, oneshot__max_error=max_error), WORLD)
    fixed = setup(None, sets(**BASE), WORLD)          # the same network weights (seeded)
    x, y, idx = bench_batch(run)
    batch = Batch(x, y, idx)
    adaptive = LayerParallelMethod(run)
    plain = LayerParallelMethod(fixed)
    exact = LayerParallelMethod(fixed, exact=True)
    first, _ = grads(adaptive, batch)                 # step 1: no check
    assert "grad_error" not in first.extra and first.fwd_iters == 1
    grads(plain, batch)
    info, checked = grads(adaptive, batch)            # step 2: a check
    _, g = grads(plain, batch)                        # the one-shot gradient it replaced
    _, e = grads(exact, batch)
    assert all(torch.equal(a, b) for a, b in zip(checked, e, strict=True))
    assert info.fwd_iters == 1                        # the counts apply from the next step
    assert info.extra["grad_error"] == pytest.approx(relative_error(g, e), rel=1e-10)
    raised = max_error < info.extra["grad_error"]
    assert raised == (max_error == 1e-12)
    nxt, _ = grads(adaptive, batch)
    assert (nxt.fwd_iters, nxt.adj_iters) == ((2, 2) if raised else (1, 1))


def test_the_counts_fall_back_when_the_error_is_small_again():
    # min_error above any error: each check lowers the counts, never below the configured 2
    run = setup(None, sets(**{**BASE, "train__fwd_iters": 2, "train__adj_iters": 2},
                           oneshot__check_every=1, oneshot__max_error=1e9,
                           oneshot__min_error=1e8, mgrit__tol=0.0), WORLD)
    x, y, idx = bench_batch(run)
    method = LayerParallelMethod(run)
    method.fwd_kw["max_iter"] = method.adj_kw["max_iter"] = 4      # as if raised before
    iters = [method.step(Batch(x, y, idx)).fwd_iters for _ in range(4)]
    assert iters == [4, 3, 2, 2]


def test_the_counts_stop_at_mgrit_max_iter():
    run = setup(None, sets(**BASE, oneshot__check_every=1, oneshot__max_error=1e-12,
                           oneshot__min_error=0.0, mgrit__max_iter=3, mgrit__tol=0.0), WORLD)
    x, y, idx = bench_batch(run)
    method = LayerParallelMethod(run)
    iters = [method.step(Batch(x, y, idx)).fwd_iters for _ in range(5)]
    assert iters == [1, 2, 3, 3, 3]
