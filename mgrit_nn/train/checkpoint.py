"""Save and restore a training run: model, optimizer, schedule, data position, method state.

Every component contributes a nested dict of arrays in the *global* layout (parameters
and optimizer tensors in the global flat parameter order, a method's states by global
point or interface index), so a run can resume on a different number of ranks or
replicas; :mod:`mgrit_nn.io.checkpoint` writes the tree as HDF5 groups. Every rank reads
the checkpoint file (a file system all ranks see is assumed).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import torch

from mgrit_nn.io.checkpoint import (
    CheckpointError,
    checkpoint_path,
    open_checkpoint,
    prune,
    write_checkpoint,
)
from mgrit_nn.model.layout import ParamLayout
from mgrit_nn.optim import load_optimizer_state, optimizer_state


def save(trainer, out: Path, step: int, history=None) -> Path | None:
    """Gather everything on rank 0 and write ``OUT/checkpoints/step_XXXXXXXX.h5`` (collective);
    ``history`` (rank 0's :class:`~mgrit_nn.io.history.History`): its rows go in too."""
    m, params, cfg = trainer.method, trainer.params, trainer.cfg
    model = m.gather_flat(m.local_flat(params))
    tensors, scalars = optimizer_state(trainer.opt, params)
    optimizer = {name: m.gather_flat(m.local_flat(ts)) for name, ts in tensors.items()}
    method = m.state_dict()
    if trainer.run.world.Get_rank() != 0:
        return None
    tree = {"model": trainer.layout.named(model.cpu()), **method,
            "rng": {"torch": torch.get_rng_state()}}
    if optimizer:
        tree["optimizer"] = optimizer
    history_attrs = {}
    if history is not None:
        tree["history"], history_attrs["history_attrs"] = history.state_dict()
    sched = trainer.schedule
    attrs = {"step": step, "epoch": trainer.epoch, "batches_left": len(trainer.stream.queue),
             "lr": trainer.opt.param_groups[0]["lr"], "config": cfg.to_yaml(),
             "method": cfg.train.method, "optimizer": cfg.train.optimizer,
             "schedule_last_epoch": sched.last_epoch if sched is not None else step,
             "layers": trainer.layout.N, "run_id": trainer.run_id, **history_attrs,
             **{f"opt_{k}": v for k, v in scalars.items()}}
    path = write_checkpoint(checkpoint_path(out, step), tree, attrs)
    prune(out, cfg.checkpoint.keep)
    return path


def check_compatible(f: h5py.File, layout: ParamLayout, path) -> None:
    """Refuse a checkpoint of another network shape with a message naming the difference."""
    if int(f.attrs["layers"]) != layout.N:
        raise CheckpointError(f"checkpoint {path} has {int(f.attrs['layers'])} layers, "
                              f"the config has model.layers = {layout.N}")
    expected = {"opening/weight": layout.s.opening[0], "layers/00000/weight": layout.s.layer[0],
                "classifier/weight": layout.s.classifier[0]}
    for name, shape in expected.items():
        got = tuple(f[f"model/{name}"].shape)
        if got != tuple(shape):
            raise CheckpointError(f"checkpoint {path}: model/{name} has shape {got}, this "
                                  f"network needs {tuple(shape)} (model.kind/width/channels "
                                  f"or the data set differ)")


def verify(path: str | Path, layout: ParamLayout, optimizer: str | None = None,
           run_id: str | None = None) -> None:
    """Raise CheckpointError unless ``path`` is a complete checkpoint of this network (and,
    to resume it, of this ``train.optimizer``; of the run ``run_id`` when given)."""
    with open_checkpoint(path) as f:
        check_compatible(f, layout, path)
        theirs = str(f.attrs.get("run_id", ""))
        if run_id and theirs and theirs != run_id:
            raise CheckpointError(f"checkpoint {path} belongs to another run (run id "
                                  f"{theirs}; the run in this folder is {run_id})")
        if optimizer is not None and f.attrs["optimizer"] != optimizer:
            raise CheckpointError(f"checkpoint {path} was written by optimizer "
                                  f"{f.attrs['optimizer']}, the config has "
                                  f"train.optimizer = {optimizer}; "
                                  "use --init-from to start a new run from its weights")


def restore(trainer, path: str | Path, weights_only: bool = False,
            verified: bool = False) -> int:
    """Load a checkpoint into the trainer on every rank; returns the step to continue from.
    ``verified``: :func:`verify` has just checked this file (its checksum is not read again)."""
    m, params, layout = trainer.method, trainer.params, trainer.layout
    with open_checkpoint(path, checksum=not verified) as f:
        check_compatible(f, layout, path)
        model = layout.flat({k: f[f"model/{k}"][()] for k in layout.keys()})
        with torch.no_grad():
            for p, t in zip(params, m.local_from_global(model), strict=True):
                p.copy_(t)
        if weights_only:
            return 0
        trainer.run_id = str(f.attrs.get("run_id", "")) or trainer.run_id
        tensors = {name: m.local_from_global(torch.from_numpy(f[f"optimizer/{name}"][()]))
                   for name in f.get("optimizer", {})}
        scalars = {k[4:]: float(v) for k, v in f.attrs.items() if k.startswith("opt_")}
        load_optimizer_state(trainer.opt, params, tensors, scalars)
        lr = float(f.attrs["lr"])
        for group in trainer.opt.param_groups:
            group["lr"] = lr
        if trainer.schedule is not None:
            state = trainer.schedule.state_dict()
            state.update(last_epoch=int(f.attrs["schedule_last_epoch"]), _last_lr=[lr])
            trainer.schedule.load_state_dict(state)
        m.load_state_dict(f)
        trainer.stream.restore(int(f.attrs["epoch"]), int(f.attrs["batches_left"]))
        torch.set_rng_state(torch.from_numpy(f["rng/torch"][()]))
        return int(f.attrs["step"])


def save_if_due(trainer, out: Path, step: int, last: bool, history=None) -> None:
    every = trainer.cfg.checkpoint.every
    if last or (every and step % every == 0):
        save(trainer, out, step, history)
