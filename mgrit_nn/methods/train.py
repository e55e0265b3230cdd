"""``mgrit-nn train``: the optimization loop shared by every method.

Per step: take the next mini-batch (this replica's share), evaluate loss and
gradient with the method, sum gradients over data replicas (one Allreduce of a
flat buffer), update with the optimizer, validate every ``train.eval_every`` steps.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI
from tqdm import tqdm

from mgrit_nn.data import batches
from mgrit_nn.methods.base import StepInfo
from mgrit_nn.methods.optim import LBFGS, make_optimizer, make_schedule
from mgrit_nn.setup_run import Run

log = logging.getLogger("mgrit_nn.train")


def make_method(run: Run):
    method = run.cfg.train.method
    if method == "serial":
        from mgrit_nn.methods.serial import SerialMethod

        return SerialMethod(run)
    from mgrit_nn.methods.layer_parallel import LayerParallelMethod

    return LayerParallelMethod(run, exact=(method == "mgrit"))


def world_sum(comm: MPI.Comm, *values: float) -> list[float]:
    buf = np.array(values, dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return buf.tolist()


class Trainer:
    def __init__(self, run: Run) -> None:
        self.run, self.cfg = run, run.cfg
        self.method = make_method(run)
        self.params = self.method.parameters()
        self.opt = make_optimizer(self.params, self.cfg.train, self.method.dot)
        self.schedule = make_schedule(self.opt, self.cfg.train)
        d = run.data
        self.x = d.x_train.to(run.device, run.dtype)
        self.y = d.y_train.to(run.device)
        self.xv = d.x_val.to(run.device, run.dtype)
        self.yv = d.y_val.to(run.device)
        self.replica, self.replicas = run.data_msg.rank, run.data_msg.size
        self.epoch, self.queue = 0, []
        self.history: list[dict] = []

    # -- pieces of one step ------------------------------------------------------------------
    def next_batch(self) -> torch.Tensor:
        if not self.queue:
            d = self.cfg.data
            self.queue = batches(len(self.x), d.batch_size, d.seed, self.epoch)
            self.epoch += 1
        return self.queue.pop(0)

    def share(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        mine = torch.tensor_split(idx, self.replicas)[self.replica]
        return mine, len(mine) / len(idx)

    def sum_gradients(self) -> None:
        """Sum over data replicas: one Allreduce of one flat buffer per rank."""
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

    def step(self, k: int) -> dict:
        idx = self.next_batch()
        mine, scale = self.share(idx)
        x, y = self.x[mine], self.y[mine]
        t0 = time.perf_counter()
        info: StepInfo = self.method.gradient(x, y, mine, scale)
        self.sum_gradients()
        loss = self.run.data_msg.allreduce_sum(info.loss)
        lr = self.opt.param_groups[0]["lr"]
        if isinstance(self.opt, LBFGS):
            def closure() -> float:
                return self.run.data_msg.allreduce_sum(self.method.loss(x, y, scale))
            self.opt.step(closure, loss)
        else:
            self.opt.step()
        if self.schedule is not None:
            self.schedule.step()
        grad_sq = self.method.dot(sum(float((p.grad ** 2).sum()) for p in self.params))
        (correct,) = world_sum(self.run.world, info.correct)
        row = {"step": k, "epoch": self.epoch - 1, "loss": loss,
               "train_accuracy": correct / len(idx), "lr": lr, "grad_norm": grad_sq ** 0.5,
               "fwd_iters": info.fwd_iters, "fwd_residual": info.fwd_residual,
               "adj_iters": info.adj_iters, "adj_residual": info.adj_residual,
               "step_time_s": time.perf_counter() - t0}
        if not np.isfinite(loss):
            from mgrit_nn.runtime import CollectiveError

            raise CollectiveError(f"training: the loss is {loss} at step {k}")
        return row

    # -- the loop ----------------------------------------------------------------------------
    def train(self, quiet: bool = False) -> dict:
        t = self.cfg.train
        rank0 = self.run.world.Get_rank() == 0
        bar = tqdm(total=t.steps, disable=quiet or not rank0, dynamic_ncols=True,
                   desc=t.method)
        t_start = time.perf_counter()
        for k in range(1, t.steps + 1):
            row = self.step(k)
            if t.eval_every and (k % t.eval_every == 0 or k == t.steps):
                row["val_loss"], row["val_accuracy"] = self.evaluate(self.xv, self.yv)
            self.history.append(row)
            post = {"loss": f"{row['loss']:.4f}", "acc": f"{row['train_accuracy']:.3f}"}
            if "val_accuracy" in row:
                post["val"] = f"{row['val_accuracy']:.3f}"
            if row["fwd_iters"]:
                post["r_fwd"] = f"{row['fwd_residual']:.1e}"
                post["r_adj"] = f"{row['adj_residual']:.1e}"
            bar.set_postfix(post, refresh=False)
            bar.update()
        bar.close()
        wall = time.perf_counter() - t_start
        train_loss, train_acc = self.evaluate(self.x, self.y)
        val_loss, val_acc = self.evaluate(self.xv, self.yv)
        its = [r["fwd_iters"] for r in self.history]
        adj = [r["adj_iters"] for r in self.history]
        return {
            "method": t.method, "optimizer": t.optimizer,
            "ranks": self.run.world.Get_size(), "layer_ranks": self.run.msg.size,
            "data_replicas": self.replicas, "layers": self.cfg.model.layers,
            "dtype": self.cfg.runtime.dtype, "steps": t.steps, "epochs": self.epoch,
            "loss": self.history[-1]["loss"] if self.history else None,
            "train_loss": train_loss, "train_accuracy": train_acc,
            "val_loss": val_loss, "val_accuracy": val_acc,
            "fwd_iters_per_step": float(np.mean(its)) if its else 0.0,
            "adj_iters_per_step": float(np.mean(adj)) if adj else 0.0,
            "wall_time_s": wall,
        }


def train(run: Run, out: str | None, quiet: bool = False) -> dict:
    trainer = Trainer(run)
    result = trainer.train(quiet)
    out_dir = Path(out) if out else None
    result["out"] = str(out_dir) if out_dir else None
    if out_dir is not None and run.world.Get_rank() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(run.cfg.to_yaml())
        (out_dir / "history.json").write_text(json.dumps(trainer.history))
        (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    log.info("trained %d steps in %.1f s", result["steps"], result["wall_time_s"])
    return result
