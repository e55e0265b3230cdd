"""local_critic (issue 9): one group == serial; the pipeline on K ranks == a one-process
simulation of the same algorithm; fewer steps than groups; checkpoint round trip."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import WORLD, datasets, ranks, sets
from mpi4py import MPI

from mgrit_nn.data import batches
from mgrit_nn.mgrit.hierarchy import block_starts
from mgrit_nn.model.critic import build_critic
from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.optim import make_optimizer
from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer

pytestmark = pytest.mark.mpi

BASE = dict(data__name="peaks", data__n_train=40, data__n_val=16, data__batch_size=16,
            model__width=4, model__layers=8, train__method="local_critic", train__steps=7,
            train__eval_every=0, train__lr=0.01, critic__hidden=6, critic__lr=0.01)
CONV = dict(data__name="digits", data__n_train=30, data__n_val=10, data__batch_size=12,
            model__kind="conv", model__channels=2, model__layers=6, critic__kind="conv",
            critic__channels=2, critic__pool=2, critic__hidden=0, train__optimizer="sgd",
            train__lr=0.05, train__weight_decay=0.001)


def trained(comm, **kw) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(setup(None, sets(**{**BASE, **kw}), comm))
    trainer.train(quiet=True)
    return trainer, trainer.history


def global_weights(trainer: Trainer) -> torch.Tensor:
    """The main network in the global flat order, on every rank of the trainer's group."""
    m = trainer.method
    flat = m.gather_flat(m.local_flat(trainer.params))
    n = torch.zeros(1, dtype=torch.int64)
    if flat is not None:
        n[0] = flat.numel()
    comm = trainer.run.msg.comm
    comm.Bcast(n.numpy(), root=0)
    if flat is None:
        flat = torch.empty(int(n[0]), dtype=torch.float64)
    comm.Bcast(flat.numpy(), root=0)
    return flat


def worst(values: list[float], comm=WORLD) -> float:
    return comm.allreduce(max(values, default=0.0), op=MPI.MAX)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class Simulation:
    """The algorithm of methods/local_critic.py in one process, written against the serial
    network: every tick all groups compute with the weights of the tick's start, then f_q
    steps on its local loss and c_q steps on |L_q - L_{q+1}| of the batch before."""

    def __init__(self, K: int, **kw) -> None:
        run = setup(None, sets(**{**BASE, **kw}), MPI.COMM_SELF)
        self.run, cfg, self.K = run, run.cfg, K
        self.net = SerialResNet(cfg.model, run.shapes, torch.float64)
        starts = block_starts(cfg.model.layers + 1, K)
        self.groups = []
        for q in range(K):
            mods = [self.net.opening] if q == 0 else []
            mods += list(self.net.layers[max(starts[q], 1) - 1:starts[q + 1] - 1])
            mods += [self.net.classifier] if q == K - 1 else []
            self.groups.append((max(starts[q], 1) - 1, starts[q + 1] - 1, mods))
        self.critics = [build_critic(cfg.critic, run.shapes, cfg.model.seed, q, torch.float64)
                        for q in range(K - 1)]
        self.opts = [make_optimizer([p for m in mods for p in m.parameters()], cfg.train, None)
                     for _, _, mods in self.groups]
        self.copts = [torch.optim.Adam(c.parameters(), lr=cfg.critic.lr) for c in self.critics]

    def f(self, q: int, u: torch.Tensor) -> torch.Tensor:
        net, (j0, j1, _) = self.net, self.groups[q]
        if q == 0:
            u = net.act(net.opening(net.op.module_input(u)))
        for layer in net.layers[j0:j1]:
            u = u + net.h * net.act(layer(u))
        return u

    def train(self, steps: int) -> list[float]:
        d, cfg, K = self.run.data, self.run.cfg, self.K
        queue, epoch, seen, losses = [], 0, [], []
        h, pending = [None] * K, [None] * K
        for k in range(1, steps + 1):
            if not queue:
                queue, epoch = batches(len(d.x_train), cfg.data.batch_size, cfg.data.seed,
                                       epoch), epoch + 1
            seen.append(queue.pop(0))
            out, L, G = [None] * K, [None] * K, [None] * K
            for q in range(K):
                if k - q < 1:
                    continue
                idx = seen[k - q - 1]
                u = self.f(q, d.x_train[idx].double() if q == 0 else h[q - 1])
                out[q] = u.detach()
                logits = (self.net.classifier(u.flatten(1)) if q == K - 1
                          else self.critics[q](u))
                loss = F.cross_entropy(logits, d.y_train[idx])
                params = [p for m in self.groups[q][2] for p in m.parameters()]
                cps = list(self.critics[q].parameters()) if q < K - 1 else []
                grads = torch.autograd.grad(loss, params + cps)
                for p, g in zip(params, grads, strict=False):
                    p.grad = g
                L[q], G[q] = loss.item(), grads[len(params):]
            for q in range(K):
                if L[q] is not None:
                    self.opts[q].step()
                if q < K - 1 and pending[q] is not None:
                    sign = float(np.sign(pending[q][0] - L[q + 1]))
                    for p, g in zip(self.critics[q].parameters(), pending[q][1], strict=True):
                        p.grad = g * sign
                    self.copts[q].step()
                pending[q] = (L[q], G[q]) if L[q] is not None and q < K - 1 else None
            h = out
            losses.append(L[max(q for q in range(K) if L[q] is not None)])
        return losses

    def weights(self) -> torch.Tensor:
        net = self.net
        parts = [net.opening.weight, net.opening.bias]
        for layer in net.layers:
            parts += [layer.weight, layer.bias]
        parts += [net.classifier.weight, net.classifier.bias]
        return torch.cat([p.detach().flatten() for p in parts])


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_one_group_is_serial_training(opt):
    """K = 1: the only group trains on the true loss: the serial iterates to round-off."""
    kw = dict(train__optimizer=opt, train__weight_decay=0.001, reg__theta=0.01, reg__ddt=0.01)
    lc, lc_hist = trained(MPI.COMM_SELF, **kw)
    se, se_hist = trained(MPI.COMM_SELF, **{**kw, "train__method": "serial"})
    loss_err = max(abs(a["loss"] - b["loss"]) / b["loss"]
                   for a, b in zip(lc_hist, se_hist, strict=True))
    w_err = rel(global_weights(lc), torch.cat([p.detach().flatten() for p in se.params]))
    assert worst([loss_err]) < 1e-12 and worst([w_err]) < 1e-12, (loss_err, w_err)


@pytest.mark.parametrize("kw", [{}, CONV], ids=["dense", "conv"])
def test_pipeline_equals_one_process_simulation(kw):
    """Every rank count: main network, critics and logged losses as the simulation."""
    K = WORLD.Get_size()
    trainer, hist = trained(WORLD, **kw)
    sim = Simulation(K, **kw)
    ref = sim.train(len(hist))
    loss_err = max(abs(r["loss"] - s) / s for r, s in zip(hist, ref, strict=True))
    w_err = rel(global_weights(trainer), sim.weights())
    m = trainer.method
    c_err = 0.0 if m.critic is None else max(
        rel(a.detach(), b.detach()) for a, b in
        zip(m.critic.parameters(), sim.critics[m.i].parameters(), strict=True))
    assert worst([loss_err]) < 1e-10, loss_err
    assert worst([w_err]) < 1e-10, w_err
    assert worst([c_err]) < 1e-10, c_err
    if K > 1:           # the pipeline did train every group, and its critics moved
        assert all(np.isfinite(hist[-1][f"local_loss_{q}"]) for q in range(K - 1))
        assert worst([rel(global_weights(trainer), sim_init_weights(kw))]) > 1e-3


def sim_init_weights(kw) -> torch.Tensor:
    return Simulation(1, **kw).weights()


def test_fewer_steps_than_groups_then_resume():
    """steps < K: no hang, idle groups keep their initial weights; a checkpoint in the
    fill-up resumes to the same weights as an uninterrupted run."""
    K = WORLD.Get_size()
    out = Path(WORLD.bcast(tempfile.mkdtemp() if WORLD.Get_rank() == 0 else None))
    try:
        fill_up_and_resume(K, out)
    finally:
        WORLD.Barrier()
        if WORLD.Get_rank() == 0:
            shutil.rmtree(out)


def fill_up_and_resume(K: int, out: Path) -> None:
    short = max(1, K - 2)
    from mgrit_nn.train.checkpoint import restore, save

    trainer, hist = trained(WORLD, train__steps=short)
    assert len(hist) == short
    w = global_weights(trainer)
    init = sim_init_weights({})
    m = trainer.method
    idle = m.i > short - 1                 # group i first works at step i + 1
    mine = m.local_flat(trainer.params)
    start = m.run_layout.offset(m.net.first, m.net.jlo)
    same = bool(torch.equal(mine, init[start:start + mine.numel()]))
    assert WORLD.allreduce(int(idle and not same)) == 0
    assert WORLD.allreduce(int(not idle and same)) == 0
    assert rel(w, init) > 0
    save(trainer, out, short)
    straight, _ = trained(WORLD, train__steps=K + 2)
    resumed = Trainer(setup(None, sets(**{**BASE, "train__steps": K + 2}), WORLD))
    start_step = restore(resumed, out / "checkpoints" / f"step_{short:08d}.h5")
    assert start_step == short
    resumed.train(quiet=True, start=start_step)
    assert torch.equal(global_weights(resumed), global_weights(straight))


CLI_SMALL = ["--set", "train.method=local_critic", "--set", "data.n_train=48", "--set",
             "data.n_val=16", "--set", "data.batch_size=16", "--set", "model.layers=8",
             "--set", "model.width=4", "--set", "critic.hidden=6", "--set",
             "train.eval_every=4", "--quiet"]


@ranks(2, 4)
def test_resume_through_the_command_is_bitwise(shared_tmp, train_command):
    """Checkpoint at step 5 on 2 ranks, at 2 on 4 (inside the pipeline fill-up), resume,
    and every logged column and every checkpoint array equals the uninterrupted run's bits;
    result.json holds the sub-model table."""
    size, split = WORLD.size, {2: 5, 4: 2}[WORLD.size]
    train = train_command("configs/peaks.yaml", CLI_SMALL)
    every = ["--set", f"checkpoint.every={split}", "--set", "checkpoint.keep=0"]
    train(shared_tmp / "straight", *every, steps=9)
    train(shared_tmp / "split", *every, steps=split)
    train(shared_tmp / "split", *every, "--resume", "latest", steps=9)
    with h5py.File(shared_tmp / "straight/history.h5") as a, \
            h5py.File(shared_tmp / "split/history.h5") as b:
        cols = [c for c in a["steps"] if c not in ("step_time_s", "fwd_residuals",
                                                    "adj_residuals")]
        assert {f"local_loss_{q}" for q in range(size - 1)} <= set(cols)
        for c in cols:
            x, y = a[f"steps/{c}"][()], b[f"steps/{c}"][()]
            if c.startswith("val_"):     # the first run also validated at its last step
                x, y = np.delete(x, split - 1), np.delete(y, split - 1)
            assert np.array_equal(x, y, equal_nan=True), c
    final = "checkpoints/step_00000009.h5"
    da, db = datasets(shared_tmp / "straight" / final), datasets(shared_tmp / "split" / final)
    assert da.keys() == db.keys()
    assert any(k.startswith(f"local_critic/{size - 2}/critic/") for k in da)
    # rng/torch: this torch seeds its global generator randomly in every new process, and no
    # training path draws from it; everything else must match bit for bit
    # history/: the checkpoint's copy of the history rows, compared as history.h5 above
    differ = [k for k in da if k != "rng/torch" and not k.startswith("history/")
              and not np.array_equal(da[k], db[k])]
    assert not differ, differ
    result = json.loads((shared_tmp / "split/result.json").read_text())
    rows = result["submodels"]
    assert [r["groups"] for r in rows] == list(range(1, size + 1))
    assert rows[-1]["head"] == "classifier" and rows[-1]["val_accuracy"] == result["val_accuracy"]
