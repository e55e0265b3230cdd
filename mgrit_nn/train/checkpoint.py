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
    Part,
    checkpoint_path,
    open_checkpoint,
    prune,
    write_checkpoint,
)
from mgrit_nn.model.layout import ParamLayout
from mgrit_nn.optim import load_optimizer_state, optimizer_state


def save(trainer, out: Path, step: int, history=None) -> Path | None:
    """Write ``OUT/checkpoints/step_XXXXXXXX.h5`` (collective): every rank of the first
    replica gives its share (as :class:`Part` s), rank 0 the rest; gathered into one file or
    written as shards (``checkpoint.layout``). ``history`` (rank 0's
    :class:`~mgrit_nn.io.history.History`): its rows go in too. Returns the path on rank 0."""
    m, params, cfg, run = trainer.method, trainer.params, trainer.cfg, trainer.run
    start, _ = m.share()
    tensors, scalars = optimizer_state(trainer.opt, params)
    method = m.state_dict()                 # collective (over the replicas too)
    if run.data_msg.rank != 0:              # the other replicas hold the same shares
        return None
    model = m.local_flat(params).cpu()
    tree = {"model": {k: Part(t.numpy(), 0, t.shape[0])
                      for k, t in trainer.layout.named_share(model, start).items()},
            **method, "rng": {"torch": torch.get_rng_state()}}
    if tensors:
        tree["optimizer"] = {name: Part(m.local_flat(ts).cpu().numpy(), start,
                                        trainer.layout.size) for name, ts in tensors.items()}
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
    writers = run.msg.comm
    path = write_checkpoint(checkpoint_path(out, step), tree, attrs, writers,
                            cfg.checkpoint.layout)
    if writers.Get_rank() == 0:
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
           run_id: str | None = None, comm=None) -> None:
    """Raise CheckpointError unless ``path`` is a complete checkpoint of this network (and,
    to resume it, of this ``train.optimizer``; of the run ``run_id`` when given). With
    ``comm`` (collective): the ranks share the reading of a sharded checkpoint's shards and
    agree on the verdict."""
    from mgrit_nn.io.shards import shard_problem

    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    with open_checkpoint(path, shards=False) as f:
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
        why = shard_problem(Path(path), f, rank, size)      # last: it reads the shards
        if size > 1:        # checkpoint only: a small pickled list
            why = next((w for w in comm.allgather(why) if w is not None), None)
        if why is not None:
            raise CheckpointError(why)


def restore(trainer, path: str | Path, weights_only: bool = False,
            verified: bool = False) -> int:
    """Load a checkpoint into the trainer on every rank; returns the step to continue from.
    ``verified``: :func:`verify` has just checked this file (its checksum is not read again)."""
    m, params, layout = trainer.method, trainer.params, trainer.layout
    with open_checkpoint(path, checksum=not verified) as f:
        check_compatible(f, layout, path)
        start, n = m.share()         # read only this rank's share (of a shard, through the map)
        keys = layout.keys_in(start, n)
        share = layout.flat({k: f[f"model/{k}"][()] for k in keys}, keys)
        with torch.no_grad():
            for p, t in zip(params, m.local_from_share(share), strict=True):
                p.copy_(t)
        if weights_only:
            return 0
        trainer.run_id = str(f.attrs.get("run_id", "")) or trainer.run_id
        tensors = {name: m.local_from_share(torch.from_numpy(ds[start:start + n]))
                   for name, ds in f.get("optimizer", {}).items()}
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
