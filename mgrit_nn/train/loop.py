"""``mgrit-nn train``: the optimization loop shared by every method.

Before the first step the method's start phase runs (:meth:`Method.start`). Per step:
take the next mini-batch (this replica's share), let the method do its step (gradients
in ``.grad``), sum gradients over data replicas (one reduction of one flat buffer),
update with the optimizer, validate every ``train.eval_every`` steps. The loop calls the
method only through the protocol of :mod:`mgrit_nn.methods.base`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI
from tqdm import tqdm

from mgrit_nn.data import BatchStream
from mgrit_nn.methods.base import Batch, Method, StepInfo, TrainData
from mgrit_nn.methods.registry import METHODS
from mgrit_nn.model.layout import ParamLayout
from mgrit_nn.optim import make_optimizer, make_schedule
from mgrit_nn.runtime import CollectiveError
from mgrit_nn.setup_run import Run

log = logging.getLogger("mgrit_nn.train")


def world_sum(comm: MPI.Comm, *values: float) -> list[float]:
    buf = np.array(values, dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return buf.tolist()


def make_method(run: Run) -> Method:
    """The method object of ``train.method`` (its registry entry builds it)."""
    return METHODS[run.cfg.train.method].build(run)


class Trainer:
    def __init__(self, run: Run) -> None:
        self.run, self.cfg = run, run.cfg
        self.method = make_method(run)
        self.params = self.method.parameters()
        self.opt = make_optimizer(self.params, self.cfg.train, self.method.dot, self.method.lr())
        self.schedule = make_schedule(self.opt, self.cfg.train)
        d = run.data
        self.data = TrainData(d.x_train.to(run.device, run.dtype), d.y_train.to(run.device),
                              d.x_val.to(run.device, run.dtype), d.y_val.to(run.device))
        self.x, self.y, self.xv, self.yv = self.data.x, self.data.y, self.data.xv, self.data.yv
        self.replica, self.replicas = run.data_msg.rank, run.data_msg.size
        self.stream = BatchStream(len(self.x), self.cfg.data.batch_size, self.cfg.data.seed)
        self.history: list[dict] = []
        self.run_id = ""             # the run's id, in every checkpoint (set by train())
        self.warned_divergence = False
        self.layout = ParamLayout(run.shapes, self.cfg.model.layers)
        self.method.bind(self.opt)

    # -- pieces of one step ------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Epochs started so far."""
        return self.stream.epoch

    def next_batch(self) -> torch.Tensor:
        return self.stream.next()

    def share(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        mine = torch.tensor_split(idx, self.replicas)[self.replica]
        return mine, len(mine) / len(idx)

    def sum_gradients(self) -> None:
        """Sum over data replicas: one reduction of one flat buffer per rank (Reduce + Bcast,
        so every replica holds the same bits and takes the same decisions)."""
        if self.replicas == 1:
            return
        flat = torch.cat([p.grad.flatten() for p in self.params])
        self.run.data_msg.allreduce_tensor(flat)
        for p, g in zip(self.params, torch.split(flat, [p.numel() for p in self.params]),
                        strict=True):
            p.grad.copy_(g.view_as(p))

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(mean loss, accuracy) of the exact forward pass, the data split over replicas."""
        if len(x) == 0:
            return float("nan"), float("nan")
        mine = torch.tensor_split(torch.arange(len(x)), self.replicas)[self.replica]
        ce, correct = self.method.evaluate(x[mine], y[mine])
        ce, correct = world_sum(self.run.world, ce, correct)
        return ce / len(x), correct / len(x)

    def closure(self, batch: Batch, loss: float):
        """The optimizer's closure: the loss at the current parameters. Its first call
        returns the step's own ``loss`` (SGD and Adam call it once, at no cost); later
        calls (L-BFGS' line search) evaluate :meth:`Method.loss` at the trial point."""
        first = True

        def closure() -> float:
            nonlocal first
            if first:
                first = False
                return loss
            return self.run.data_msg.allreduce_sum(self.method.loss(batch))
        return closure

    def step(self, k: int) -> tuple[dict, StepInfo]:
        idx = self.next_batch()
        mine, scale = self.share(idx)
        batch = Batch(self.x[mine], self.y[mine], mine, scale)
        t0 = time.perf_counter()
        info: StepInfo = self.method.step(batch)
        self.sum_gradients()
        loss = self.run.data_msg.allreduce_sum(info.loss)
        if not np.isfinite(loss):            # before the update: the weights stay usable
            raise CollectiveError(f"training: the loss is {loss} at step {k}")
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step(self.closure(batch, loss))
        if self.schedule is not None:
            self.schedule.step()
        grad_sq = self.method.dot(sum(float((p.grad ** 2).sum()) for p in self.params
                                      if p.grad is not None))
        (correct,) = world_sum(self.run.world, info.correct)
        row = {"step": k, "epoch": self.epoch - 1, "loss": loss,
               "train_accuracy": correct / len(idx), "lr": lr, "grad_norm": grad_sq ** 0.5,
               "fwd_iters": info.fwd_iters, "fwd_residual": info.fwd_residual,
               "adj_iters": info.adj_iters, "adj_residual": info.adj_residual,
               **info.extra, "step_time_s": time.perf_counter() - t0}
        return row, info

    # -- the loop ----------------------------------------------------------------------------
    def _timing(self, before: dict, elapsed: float) -> np.ndarray | None:
        """(compute, comm, wait) seconds of this step on every rank, gathered on rank 0."""
        now = self.run.msg.timers.seconds
        comm, wait = (now.get(k, 0.0) - before.get(k, 0.0) for k in ("comm", "wait"))
        mine = np.array([elapsed - comm - wait, comm, wait])
        world = self.run.world
        out = np.empty((world.Get_size(), 3)) if world.Get_rank() == 0 else None
        world.Gather(mine, out, root=0)
        return out

    def train(self, quiet: bool = False, out: Path | None = None, start: int = 0,
              history=None, stop=None) -> dict:
        """Steps start+1 .. train.steps; returns the result (``stopped`` if a signal came)."""
        from mgrit_nn.train.checkpoint import save_if_due

        t = self.cfg.train
        rank0 = self.run.world.Get_rank() == 0
        bar = tqdm(total=t.steps, initial=start, disable=quiet or not rank0,
                   dynamic_ncols=True, desc=t.method)
        t_start, stopped = time.perf_counter(), False
        started = self.method.start() if start < t.steps else {}   # e.g. a global prediction
        for k in range(start + 1, t.steps + 1):
            before = dict(self.run.msg.timers.seconds)
            row, info = self.step(k)
            row.update(started)
            started = {}
            if t.eval_every and (k % t.eval_every == 0 or k == t.steps):
                row["val_loss"], row["val_accuracy"] = self.evaluate(self.xv, self.yv)
            self.history.append(row)
            if rank0:
                self._watch_divergence()
            timing = self._timing(before, row["step_time_s"])
            if history is not None:
                history.append(row, info.fwd_residuals, info.adj_residuals, timing)
            stopped = stop is not None and stop.any_rank(self.run.world)
            if out is not None:
                save_if_due(self, out, k, last=(k == t.steps or stopped), history=history)
            self._progress(bar, row)
            if stopped:
                break
        bar.close()
        wall = time.perf_counter() - t_start
        train_loss, train_acc = self.evaluate(self.x, self.y)
        val_loss, val_acc = self.evaluate(self.xv, self.yv)
        its = [r["fwd_iters"] for r in self.history]
        adj = [r["adj_iters"] for r in self.history]
        result = {
            "method": t.method, "optimizer": t.optimizer,
            "ranks": self.run.world.Get_size(), "layer_ranks": self.run.msg.size,
            "data_replicas": self.replicas, "layers": self.cfg.model.layers,
            "dtype": self.cfg.runtime.dtype, "steps": self.history[-1]["step"] if self.history
            else start, "epochs": self.epoch, "stopped_by_signal": stopped,
            "loss": self.history[-1]["loss"] if self.history else None,
            "train_loss": train_loss, "train_accuracy": train_acc,
            "val_loss": val_loss, "val_accuracy": val_acc,
            "fwd_iters_per_step": float(np.mean(its)) if its else 0.0,
            "adj_iters_per_step": float(np.mean(adj)) if adj else 0.0,
            "wall_time_s": wall,
        }
        result.update(self.method.report(self.data))
        return result

    def _watch_divergence(self, factor: float = 100.0) -> None:
        """Warn once when the loss has grown ``factor``-fold over this run's first step (a
        learning rate too large: training goes on, as asked)."""
        first, row = self.history[0], self.history[-1]
        if self.warned_divergence or len(self.history) < 2:
            return
        if row["loss"] > factor * max(first["loss"], 1e-3):
            self.warned_divergence = True
            log.warning("training diverges: the loss grew from %.3g (step %d) to %.3g (step %d);"
                        " a smaller train.lr (now %g) may help", first["loss"], first["step"],
                        row["loss"], row["step"], row["lr"])

    @staticmethod
    def _progress(bar, row: dict) -> None:
        post = {"loss": f"{row['loss']:.4f}", "acc": f"{row['train_accuracy']:.3f}"}
        if "val_accuracy" in row:
            post["val"] = f"{row['val_accuracy']:.3f}"
        if row["fwd_iters"]:
            post["r_fwd"] = f"{row['fwd_residual']:.1e}"
            post["r_adj"] = f"{row['adj_residual']:.1e}"
        bar.set_postfix(post, refresh=False)
        bar.update()


def _restart(trainer: Trainer, out_dir: Path, resume: str | None,
             init_from: str | None) -> tuple[int, Path | None]:
    """Load ``--resume`` (all state) or ``--init-from`` (weights); the step to go on from
    and the checkpoint read (None for a fresh run)."""
    from mgrit_nn.io.checkpoint import latest_checkpoint
    from mgrit_nn.io.history import run_id_of
    from mgrit_nn.runtime import agree_on_config
    from mgrit_nn.train.checkpoint import restore, verify

    source, world = resume or init_from, trainer.run.world
    if source is None:
        return 0, None

    opt = trainer.cfg.train.optimizer if resume else None     # --init-from: weights only

    def find() -> tuple[Path, list[str]]:
        if source == "latest":     # the newest that verifies, of the run in this folder
            ours = run_id_of(out_dir / "history.h5")
            return latest_checkpoint(out_dir,
                                     lambda p: verify(p, trainer.layout, opt, ours, world))
        verify(Path(source), trainer.layout, opt, comm=world)
        return Path(source), []
    path, skipped = agree_on_config(find, world)   # one message if none is usable
    for line in skipped if world.Get_rank() == 0 else ():
        log.warning("--resume latest: %s", line)
    start = restore(trainer, path, weights_only=resume is None, verified=True)
    log.info("%s from %s (step %d)", "resumed" if resume else "initialized", path, start)
    if resume and world.Get_rank() == 0:
        _say_config_changes(path, trainer.cfg)
    return start, path if resume else None


def _open_history(trainer: Trainer, out_dir: Path, checkpoint: Path | None, start: int):
    """Rank 0's history writer: a new file, or on resume the file rebuilt from the rows
    the checkpoint holds (a damaged file is kept aside, never written into)."""
    import h5py

    from mgrit_nn.io.history import History, resume_rows

    cfg, attrs, rows = trainer.cfg, {"run_id": trainer.run_id}, None
    if checkpoint is not None:
        with h5py.File(checkpoint, "r") as f:
            rows, old, notes = resume_rows(out_dir, f, start)
        for line in notes:
            log.warning("history: %s", line)
        attrs = {**old, **attrs, "resumed": f"{old.get('resumed', '')} {start}".strip()}
    return History(out_dir / "history.h5", cfg.to_yaml(), trainer.run.world.Get_size(),
                   cfg.train.method, rows=rows, attrs=attrs)


def _say_config_changes(path: Path, cfg) -> None:
    """One warning line naming every config key that differs from the checkpoint's run."""
    import h5py
    import yaml

    with h5py.File(path, "r") as f:
        old = yaml.safe_load(f.attrs.get("config", "")) or {}
    new = cfg.to_dict()
    changed = [f"{s}.{k}: {old[s][k]!r} -> {v!r}" for s, sec in new.items() for k, v in sec.items()
               if isinstance(old.get(s), dict) and k in old[s] and old[s][k] != v
               and (s, k) != ("train", "steps")]
    if changed:
        log.warning("resuming %s with a config that differs from its run: %s", path,
                    "; ".join(changed))


def train(run: Run, out: str | None, quiet: bool = False, resume: str | None = None,
          init_from: str | None = None, overwrite: bool = False) -> dict:
    """The whole command: the run folder claimed, optional restart, the loop, history and
    checkpoints in ``out``."""
    from mgrit_nn.io.checkpoint import remove_stale
    from mgrit_nn.runtime import StopSignal, agree_on_config
    from mgrit_nn.train.rundir import claim, release

    out_dir = Path(out)
    rank0 = run.world.Get_rank() == 0
    agree_on_config(lambda: claim(out_dir, resume is not None, overwrite) if rank0 else None,
                    run.world)                    # one message if the folder is taken
    try:
        stop = StopSignal()      # from here on a signal means: checkpoint, then stop
        trainer = Trainer(run)
        trainer.run_id = run.world.bcast(uuid.uuid4().hex[:12] if rank0 else None)
        start, checkpoint = _restart(trainer, out_dir, resume, init_from)
        for f in remove_stale(out_dir) if rank0 else ():
            log.info("removed %s (left by an interrupted checkpoint write)", f)
        history = _open_history(trainer, out_dir, checkpoint, start) if rank0 else None
        try:
            result = trainer.train(quiet, out_dir, start, history, stop)
        finally:
            if history is not None:
                history.close()
        result["out"] = str(out_dir)
        if rank0:
            (out_dir / "config.yaml").write_text(run.cfg.to_yaml())
            (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    finally:
        if rank0:
            release(out_dir)
    log.info("trained to step %d in %.1f s", result["steps"], result["wall_time_s"])
    return result
