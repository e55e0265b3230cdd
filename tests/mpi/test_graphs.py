"""``runtime.graphs``: every kind of MGRIT iteration recorded once and replayed trains bit
for bit as eagerly, on every rank count (each rank a replica holding all layers: a
recording needs the layers on one rank). Checked with the CPU emulation of a CUDA graph
(mgrit/capture.py), which refuses host transfers and replays only the recorded tensor
operations, as a CUDA graph does."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import WORLD, sets

from mgrit_nn.mgrit import MGRIT
from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer

pytestmark = pytest.mark.mpi

P = WORLD.Get_size()
BASE = dict(data__name="peaks", data__n_train=12 * P, data__n_val=0, data__batch_size=4 * P,
            model__width=4, model__layers=32, mgrit__cfactor=4, train__method="oneshot",
            train__steps=6, train__eval_every=0, train__lr=0.01, parallel__data_replicas=P)

CASES = {
    "oneshot FCF V": {},
    "oneshot F, F-cycles, skip": dict(mgrit__relax="F", mgrit__cycle="F", mgrit__skip="true",
                                      train__warm_start="false"),
    "mgrit exact, per-level relax": dict(train__method="mgrit", mgrit__relax="[FCF,F]",
                                         mgrit__tol=1e-9),
    "oneshot verlet, adaptive counts": dict(model__step="verlet", oneshot__check_every=2),
    "oneshot conv": dict(data__name="digits", model__kind="conv", model__channels=2,
                         model__layers=16),
}


def train(**kw):
    trainer = Trainer(setup(None, sets(**{**BASE, **kw}), WORLD))
    trainer.train(quiet=True)
    net = trainer.method.net
    return ([(r["loss"], r.get("fwd_res"), r.get("adj_res")) for r in trainer.history],
            (net.solver.stats.replays, net.adjoint.stats.replays),
            (net.solver.graphs, net.adjoint.graphs))


@pytest.mark.parametrize("case", list(CASES))
def test_replayed_iterations_train_bitwise_as_eager_ones(case):
    eager, none, _ = train(**CASES[case])
    replayed, replays, kept = train(**CASES[case], runtime__graphs="emulate")
    assert none == (0, 0)
    assert kept == ("emulate", "emulate")           # no recording failed
    assert min(replays) >= 6, replays               # most iterations were replays
    assert replayed == eager


def test_a_new_batch_size_is_recorded_anew():
    """Storage for another batch size: the recordings of the old storage are dropped, not
    replayed on memory that no longer holds the iterate."""
    def states(graphs: str) -> list[torch.Tensor]:
        run = setup(None, sets(**{**BASE, "runtime__graphs": graphs}), WORLD)
        net, x = run.network(), run.data.x_train.to(run.dtype)
        out = []
        for n in (8, 8, 8, 4, 4, 4, 8, 8):
            net.solve_forward(x[:n], max_iter=3)
            out.append(net.final_state().clone())
        return out, net.solver.stats.replays
    eager, _ = states("eager")
    got, replays = states("emulate")
    assert replays >= 3 * 4, replays
    assert all(torch.equal(a, b) for a, b in zip(eager, got, strict=True))


def test_a_failed_recording_warns_once_and_runs_eagerly(monkeypatch, caplog):
    eager, _, _ = train()
    iterate = MGRIT.iterate

    def reads_the_host(self, cycle, skip):
        sums = iterate(self, cycle, skip)
        float(self.data[0].u.sum())                 # a host read: refused in a recording
        return sums
    monkeypatch.setattr(MGRIT, "iterate", reads_the_host)
    with caplog.at_level(logging.WARNING, logger="mgrit_nn"):
        got, replays, kept = train(runtime__graphs="emulate")
    assert got == eager and replays == (0, 0) and kept == (None, None)
    failed = [r.getMessage() for r in caplog.records if "recording an iteration failed" in
              r.getMessage()]
    assert len(failed) == 2, failed                 # once per solver, forward and adjoint

