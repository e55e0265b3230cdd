"""``mgrit-nn info FILE.h5``: a readable summary of a history or checkpoint file.

The file is opened without HDF5's file lock, so the history of a running job (which holds
the writer's lock) can be read; a row the job is appending just then is left out.
"""

from __future__ import annotations

import time

import h5py
import numpy as np
import yaml


def _config_line(text: str) -> str:
    cfg = yaml.safe_load(text) or {}
    m, t, d = cfg.get("model", {}), cfg.get("train", {}), cfg.get("data", {})
    return (f"{m.get('kind')} ResNet, N={m.get('layers')}, T={m.get('T')}, data={d.get('name')}, "
            f"method={t.get('method')}, optimizer={t.get('optimizer')}")


def info(path: str, tries: int = 3) -> str:
    from pathlib import Path

    from mgrit_nn.io.checkpoint import h5_problem

    why = h5_problem(Path(path))
    if why is not None:
        raise ValueError(why)
    for attempt in range(tries):     # a running writer may be in the middle of a flush
        try:
            return _summary(path)
        except OSError:
            if attempt == tries - 1:
                raise ValueError("cannot be read: a damaged or truncated HDF5 file") from None
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _summary(path: str) -> str:
    with h5py.File(path, "r", locking=False) as f:
        try:
            if "steps" in f:
                return _history(path, f)
            if "model" in f:
                return _checkpoint(path, f)
        except KeyError as exc:       # e.g. a .tmp left by an interrupted checkpoint write
            raise ValueError(f"an incomplete mgrit_nn file: {exc.args[0]}") from None
    raise ValueError("neither an mgrit_nn history nor a checkpoint file")


def complete_rows(f: h5py.File) -> int:
    """The rows every column holds: a writer appends a row column by column, so while it
    runs the last row may be in some columns only."""
    lengths = [ds.shape[0] for g in ("steps", "timing") if g in f for ds in f[g].values()]
    return min(lengths, default=0)


def _history(path: str, f: h5py.File) -> str:
    s = f["steps"]
    n = complete_rows(f)
    partial = " (and one being written)" if s["step"].shape[0] > n else ""
    lines = [f"history {path}", f"  started {f.attrs.get('started')}, ranks {f.attrs.get('ranks')},"
             f" version {f.attrs.get('version')}",
             f"  {_config_line(f.attrs.get('config', ''))}", f"  {n} steps recorded{partial}"]
    if f.attrs.get("resumed"):
        lines.append(f"  resumed at step(s) {f.attrs['resumed']}")
    if n:
        last = {c: s[c][n - 1] for c in ("step", "loss", "train_accuracy", "grad_norm",
                                         "fwd_iters", "adj_iters")}
        lines.append("  last: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()))
        val = s["val_accuracy"][:n]
        if np.isfinite(val).any():
            k = int(np.nanargmax(val))
            lines.append(f"  best validation accuracy {val[k]:.4f} at step {int(s['step'][k])}")
        t = {c: f["timing"][c][:n].sum(axis=0) for c in f["timing"]}
        for c, v in t.items():
            lines.append(f"  {c:8s} s per rank: " + " ".join(f"{x:.2f}" for x in v))
    return "\n".join(lines)


def _checkpoint(path: str, f: h5py.File) -> str:
    from mgrit_nn.io.checkpoint import CheckpointError, open_checkpoint

    try:
        open_checkpoint(path).close()
        status = "complete, checksum OK"
    except CheckpointError as exc:
        status = f"NOT USABLE: {exc}"
    layers = f["model/layers"]
    w = layers[next(iter(layers))]["weight"].shape if len(layers) else None
    lines = [f"checkpoint {path}: {status}",
             f"  step {f.attrs.get('step')}, epoch {f.attrs.get('epoch')}, "
             f"lr {f.attrs.get('lr')}, version {f.attrs.get('version')}",
             f"  {_config_line(f.attrs.get('config', ''))}",
             f"  model: {len(layers)} layers of weight shape {w}, opening "
             f"{f['model/opening/weight'].shape}, classifier {f['model/classifier/weight'].shape}",
             f"  optimizer state: {', '.join(f['optimizer']) if 'optimizer' in f else 'none'}"]
    if "warm" in f:
        lines.append(f"  warm starts: forward {f['warm/forward'].shape}, "
                     f"adjoint {f['warm/adjoint'].shape}")
    if "shards_dir" in f.attrs:
        lines.append(f"  layout: sharded, {len(f.attrs['shards_sha256'])} shards in "
                     f"{f.attrs['shards_dir']}/ (move or copy the file with that folder)")
    return "\n".join(lines)
