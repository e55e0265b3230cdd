"""The shallow-network initialization (Sun et al., Algorithm 1 step [2]; issue 15), 1-4 ranks.

``penalty.init: shallow`` trains the network of every ``shallow_every``-th layer (step
``shallow_every * h``) and replicates its blocks into the deep network; lambda_k comes from
one forward pass of that deep network (``lambda_init: forward``) or from the shallow
network's state at interface k (``lambda_init: shallow``). Checked against a shallow
network trained here, from the same weights, with the same facility's pieces.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import WORLD, sets
from mpi4py import MPI

from mgrit_nn.model.coarse import Shallow
from mgrit_nn.model.layout import ParamLayout
from mgrit_nn.model.stage import open_state, run_steps
from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer

pytestmark = pytest.mark.mpi

EVERY = 6
BASE = dict(data__name="levelset", data__n_train=40, data__n_val=20, model__width=4,
            model__layers=24, train__steps=2, train__eval_every=0, train__lr=0.1,
            train__optimizer="sgd", train__momentum=0.0, train__method="penalty",
            penalty__init="shallow", penalty__shallow_every=EVERY, penalty__shallow_steps=5)


def trainer(**kw) -> Trainer:
    return Trainer(setup(None, sets(**{**BASE, **kw}), WORLD))


def full_weights(tr: Trainer) -> dict[str, torch.Tensor]:
    """Every rank: the deep network's weights by name (gathered, broadcast)."""
    m = tr.method
    flat = tr.run.msg.comm.bcast(m.gather_flat(m.local_flat(tr.params)), root=0)
    return ParamLayout(tr.run.shapes, tr.cfg.model.layers).named(flat)


def deep_states(tr: Trainer, w: dict[str, torch.Tensor], x: torch.Tensor) -> list:
    """u_0 .. u_N of the deep network with weights ``w``, serially, outside the method."""
    net, N = tr.method.net, tr.cfg.model.layers
    K = torch.stack([w[f"layers/{j:05d}/weight"] for j in range(N)])
    b = torch.stack([w[f"layers/{j:05d}/bias"] for j in range(N)])
    u0 = open_state(net, x, w["opening/weight"], w["opening/bias"])
    return run_steps(net, u0, K, b, net.h, keep=True)


def reference_shallow(**kw) -> tuple[Trainer, Shallow]:
    """The same shallow network, trained here from a fresh (random) network."""
    tr = trainer(penalty__init="random", **kw)
    sh = Shallow(tr.method.net, tr.method.run_layout.size, EVERY)
    x, y = tr.run.data.x_train.double(), tr.run.data.y_train
    sh.train(x, y, tr.cfg.penalty.shallow_steps, None, tr.cfg.train, tr.cfg.data)
    return tr, sh


def test_deep_network_is_the_trained_shallow_one_replicated():
    """Fine layer j = trained shallow block j // every (bit for bit), opening and classifier
    the shallow ones; the shallow network's training did change its weights."""
    tr = trainer()
    extra = tr.method.start()
    _, sh = reference_shallow()
    w = full_weights(tr)
    for j in range(tr.cfg.model.layers):
        assert torch.equal(w[f"layers/{j:05d}/weight"], sh.net.K[j // EVERY].detach()), j
        assert torch.equal(w[f"layers/{j:05d}/bias"], sh.net.b[j // EVERY].detach()), j
    assert torch.equal(w["opening/weight"], sh.net.open_w.detach())
    assert torch.equal(w["classifier/bias"], sh.net.cls_b.detach())
    fresh = full_weights(trainer(penalty__init="random"))
    assert not torch.equal(fresh["layers/00000/weight"], w["layers/00000/weight"])
    assert extra["shallow_loss"] > 0


def test_replicated_loss_is_the_deep_networks_loss_after_the_replication():
    """``replicated_loss`` = the cross-entropy of the replicated deep network, computed here
    serially from the gathered weights, to 1e-12, also when the pass runs in chunks of
    unequal size; it is not the shallow network's."""
    tr = trainer()
    extra = tr.method.start()
    x, y = tr.run.data.x_train.double(), tr.run.data.y_train
    w = full_weights(tr)
    uN = deep_states(tr, w, x)[-1]
    want = float(F.cross_entropy(uN @ w["classifier/weight"].T + w["classifier/bias"], y))
    assert abs(extra["replicated_loss"] - want) <= 1e-12 * max(1.0, want)
    assert extra["replicated_loss"] != extra["shallow_loss"]
    chunked = tr.method._initialize(x, y, store=False, chunk=7)    # 40 = 5 x 7 + 5
    assert abs(chunked - want) <= 1e-12 * max(1.0, want), (chunked, want)


@pytest.mark.parametrize("source", ["forward", "shallow"])
def test_lambda_from_the_initialized_network(source):
    """lambda_k = the deep network's state at interface k (forward: one exact pass of the
    replicated network) or the shallow network's state there (shallow), to 1e-12."""
    tr = trainer(penalty__lambda_init=source)
    tr.method.start()
    x = tr.run.data.x_train.double()
    net, m = tr.method.net, tr.method
    if source == "forward":
        want = deep_states(tr, full_weights(tr), x)[net.lo - 1]
    else:
        want = reference_shallow()[1].state_at(x, net.lo - 1)
    err = 0.0 if m.lam is None else float((m.lam.get(torch.arange(len(x))) - want).abs().max())
    worst = tr.run.msg.comm.allreduce(err, op=MPI.MAX)
    assert worst <= 1e-12 * max(1.0, float(want.abs().max())), worst


def test_replicated_network_reproduces_the_shallow_output_to_second_order_per_block():
    """Deep (step h, every block repeated) vs shallow (step H = every*h): two Euler schemes of
    one ODE, apart by the local error (1 - 1/every) H^2/2 |f' f| per block. Halving T halves
    H with the blocks fixed: the gap falls 4-fold (a wrong block assignment or step size
    leaves a gap that does not shrink: it fell 1.08-fold with mismatched openings)."""
    gaps = []
    for T in (0.5, 0.25):
        tr = trainer(model__T=T, penalty__shallow_steps=0)
        tr.method.start()
        _, sh = reference_shallow(model__T=T, penalty__shallow_steps=0)
        x = tr.run.data.x_train.double()
        deep = deep_states(tr, full_weights(tr), x)
        with torch.no_grad():
            coarse = sh.net.states(x)
        gaps.append(max(float((deep[J * EVERY] - coarse[J]).abs().max())
                        for J in range(1, len(coarse))))
    assert gaps[1] > 0 and 3.2 < gaps[0] / gaps[1] < 4.8, gaps


def test_trains_on_every_rank_count():
    """The shallow start runs (collective), then the method's steps, on 1-4 ranks."""
    tr = trainer(penalty__shallow_every=0, model__layers=12)
    out = tr.train(quiet=True)
    assert out["steps"] == 2 and out["train_loss"] == out["train_loss"]
    assert tr.history[0]["shallow_loss"] > 0
