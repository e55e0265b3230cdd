"""Save and restore a training run: model, optimizer, schedule, warm starts, data position.

Every distributed quantity is converted to the global layout first (parameters and
optimizer tensors in the global flat parameter order, warm-start iterates by global
point index), so a run can resume on a different number of ranks or replicas.
Every rank reads the checkpoint file (a file system all ranks see is assumed).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mgrit_nn.data import batches
from mgrit_nn.io.checkpoint import (
    ParamLayout,
    check_compatible,
    checkpoint_path,
    open_checkpoint,
    prune,
    read_model,
    write_checkpoint,
)
from mgrit_nn.train.optim import load_optimizer_state, optimizer_state


def save(trainer, out: Path, step: int) -> Path | None:
    """Gather everything on rank 0 and write ``OUT/checkpoints/step_XXXXXXXX.h5`` (collective)."""
    m, params, cfg = trainer.method, trainer.params, trainer.cfg
    model = m.gather_flat(m.local_flat(params))
    tensors, scalars = optimizer_state(trainer.opt, params)
    arrays = {}
    for name, ts in tensors.items():
        g = m.gather_flat(m.local_flat(ts))
        if g is not None:
            arrays[f"optimizer/{name}"] = g.numpy()
    arrays.update(m.warm_arrays())
    if trainer.run.world.Get_rank() != 0:
        return None
    arrays["rng/torch"] = torch.get_rng_state().numpy()
    sched = trainer.schedule
    attrs = {"step": step, "epoch": trainer.epoch, "batches_left": len(trainer.queue),
             "lr": trainer.opt.param_groups[0]["lr"], "config": cfg.to_yaml(),
             "method": cfg.train.method, "optimizer": cfg.train.optimizer,
             "schedule_last_epoch": sched.last_epoch if sched is not None else step,
             **{f"opt_{k}": v for k, v in scalars.items()}}
    path = write_checkpoint(checkpoint_path(out, step), model.cpu(), trainer.layout, arrays,
                            attrs)
    prune(out, cfg.checkpoint.keep)
    return path


def verify(path: str | Path, layout: ParamLayout) -> None:
    """Raise CheckpointError unless ``path`` is a complete checkpoint of this network."""
    with open_checkpoint(path) as f:
        check_compatible(f, layout, path)


def restore(trainer, path: str | Path, weights_only: bool = False) -> int:
    """Load a checkpoint into the trainer on every rank; returns the step to continue from."""
    m, params = trainer.method, trainer.params
    with open_checkpoint(path) as f:
        check_compatible(f, trainer.layout, path)
        with torch.no_grad():
            for p, t in zip(params, m.local_from_global(read_model(f, trainer.layout)),
                            strict=True):
                p.copy_(t)
        if weights_only:
            return 0
        if f.attrs["optimizer"] != trainer.cfg.train.optimizer:
            from mgrit_nn.io.checkpoint import CheckpointError

            raise CheckpointError(f"checkpoint {path} was written by optimizer "
                                  f"{f.attrs['optimizer']}, the config has "
                                  f"train.optimizer = {trainer.cfg.train.optimizer}; "
                                  "use --init-from to start a new run from its weights")
        tensors = {}
        if "optimizer" in f:
            tensors = {name: m.local_from_global(torch.from_numpy(f[f"optimizer/{name}"][()]))
                       for name in f["optimizer"]}
        scalars = {k[4:]: float(v) for k, v in f.attrs.items() if k.startswith("opt_")}
        load_optimizer_state(trainer.opt, params, tensors, scalars)
        step = int(f.attrs["step"])
        for group in trainer.opt.param_groups:
            group["lr"] = float(f.attrs["lr"])
        if trainer.schedule is not None:
            trainer.schedule.last_epoch = int(f.attrs["schedule_last_epoch"])
            trainer.schedule._last_lr = [float(f.attrs["lr"])]
        m.load_warm(f)
        d = trainer.cfg.data
        trainer.epoch, left = int(f.attrs["epoch"]), int(f.attrs["batches_left"])
        trainer.queue = batches(len(trainer.x), d.batch_size, d.seed, trainer.epoch - 1)[-left:] \
            if left else []
        torch.set_rng_state(torch.from_numpy(f["rng/torch"][()]))
    return step


def save_if_due(trainer, out: Path, step: int, last: bool) -> None:
    every = trainer.cfg.checkpoint.every
    if last or (every and step % every == 0):
        save(trainer, out, step)
