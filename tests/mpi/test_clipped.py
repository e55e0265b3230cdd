"""The worked example of docs/architecture.md: a method added as one module (methods/
clipped.py) plus one registry entry trains through the unchanged loop."""

from __future__ import annotations

from conftest import WORLD, sets

from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer

BASE = dict(model__layers=16, model__width=4, data__n_train=64, data__n_val=0,
            train__steps=6, train__optimizer="sgd", train__momentum=0.0, train__lr=0.5,
            mgrit__tol=1e-12, mgrit__max_iter=40)


def history(**kw) -> list[dict]:
    t = Trainer(setup(None, sets(**{**BASE, **kw}), WORLD))
    t.train(quiet=True)
    return t.history


def test_without_clipping_it_is_the_exact_method():
    ref = history(train__method="mgrit")
    got = history(train__method="clipped", clip__max_norm=1e30)
    assert [r["loss"] for r in got] == [r["loss"] for r in ref]
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in ref]


def test_long_gradients_are_clipped_to_max_norm():
    rows = history(train__method="clipped", clip__max_norm=0.05)
    clipped = [r for r in rows if r["grad_norm_unclipped"] > 0.05]
    assert len(clipped) == len(rows)          # this problem's gradients are all longer
    for r in clipped:
        assert abs(r["grad_norm"] - 0.05) <= 1e-12, r
    free = history(train__method="clipped", clip__max_norm=1e30)
    assert rows[0]["loss"] == free[0]["loss"]              # the same start
    assert rows[-1]["loss"] != free[-1]["loss"]            # a different path
