"""Checkpoints: one HDF5 file per saved step, written by rank 0 from gathered data.

Layout (users' scripts rely on it; see docs/hdf5.md):

    /model/opening/{weight,bias}
    /model/layers/NNNNN/{weight,bias}      global layer index, 5 digits
    /model/classifier/{weight,bias}
    /optimizer/<name>                      flat, in the global parameter order
    /warm/{forward,adjoint}                (N+1, n_train, *state) by global point index
    /warm/last_used                        (n_train,) step a sample's iterates date from, -1: none
    /rng/torch
    attrs: step, epoch, batches_left, lr, config (YAML), version, layers, complete, sha256

The file is written under a temporary name, flushed, fsync'ed and renamed, so a
crash mid-write never touches the previous checkpoint. ``complete`` is set last
and ``sha256`` covers every dataset: a truncated or altered file is refused.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from mgrit_nn import __version__
from mgrit_nn.model.init import Shapes
from mgrit_nn.runtime import UsageError


class CheckpointError(UsageError):
    """A checkpoint that cannot be used (missing, corrupt, or of another network)."""


class ParamLayout:
    """The global flat parameter order: opening (W, b), layers j = 0..N-1 (K_j, b_j), classifier."""

    def __init__(self, s: Shapes, N: int) -> None:
        self.s, self.N = s, N
        self.open = [math.prod(t) for t in s.opening]
        self.layer = [math.prod(t) for t in s.layer]
        self.cls = [math.prod(t) for t in s.classifier]
        self.size = sum(self.open) + N * sum(self.layer) + sum(self.cls)

    def offset(self, first: bool, jlo: int) -> int:
        """Where a rank's share starts: the opening if it is first, else its first layer."""
        return 0 if first else sum(self.open) + jlo * sum(self.layer)

    def named(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(flat, self.open + self.layer * self.N + self.cls)
        out = {"opening/weight": parts[0].view(self.s.opening[0]),
               "opening/bias": parts[1].view(self.s.opening[1])}
        for j in range(self.N):
            out[f"layers/{j:05d}/weight"] = parts[2 + 2 * j].view(self.s.layer[0])
            out[f"layers/{j:05d}/bias"] = parts[3 + 2 * j].view(self.s.layer[1])
        out["classifier/weight"] = parts[-2].view(self.s.classifier[0])
        out["classifier/bias"] = parts[-1].view(self.s.classifier[1])
        return out

    def flat(self, named: dict[str, np.ndarray | torch.Tensor]) -> torch.Tensor:
        keys = ["opening/weight", "opening/bias"]
        for j in range(self.N):
            keys += [f"layers/{j:05d}/weight", f"layers/{j:05d}/bias"]
        keys += ["classifier/weight", "classifier/bias"]
        return torch.cat([torch.as_tensor(np.asarray(named[k])).flatten() for k in keys])


def _digest(f: h5py.File) -> str:
    h = hashlib.sha256()

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            h.update(name.encode())
            h.update(np.ascontiguousarray(obj[()]).tobytes())
    f.visititems(visit)
    return h.hexdigest()


def write_checkpoint(path: Path, model: torch.Tensor, layout: ParamLayout,
                     arrays: dict[str, np.ndarray], attrs: dict) -> Path:
    """Write atomically: temporary file, flush, fsync, rename (rank 0 only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for name, t in layout.named(model).items():
            f[f"model/{name}"] = t.numpy()
        for name, a in arrays.items():
            f.create_dataset(name, data=a)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["version"] = __version__
        f.attrs["layers"] = layout.N
        f.attrs["sha256"] = _digest(f)
        f.attrs["complete"] = 1
        f.flush()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def open_checkpoint(path: str | Path) -> h5py.File:
    """Open and verify a checkpoint (completeness marker and checksum)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p}: no such file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise CheckpointError(f"checkpoint {p} is not a readable HDF5 file "
                              f"(truncated or corrupt?): {exc}") from None
    if f.attrs.get("complete") != 1 or "model" not in f:
        f.close()
        raise CheckpointError(f"checkpoint {p} is incomplete (the write did not finish)")
    if _digest(f) != f.attrs.get("sha256"):
        f.close()
        raise CheckpointError(f"checkpoint {p} is corrupt: its checksum does not match")
    return f


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


def read_model(f: h5py.File, layout: ParamLayout) -> torch.Tensor:
    return layout.flat({k: f[f"model/{k}"][()] for k in layout.named(
        torch.zeros(layout.size, dtype=torch.float64))})


def checkpoint_path(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:08d}.h5"


def latest_checkpoint(out: Path) -> Path:
    files = sorted((out / "checkpoints").glob("step_*.h5"))
    if not files:
        raise CheckpointError(f"--resume latest: no checkpoint in {out / 'checkpoints'}")
    return files[-1]


def prune(out: Path, keep: int) -> None:
    files = sorted((out / "checkpoints").glob("step_*.h5"))
    for f in files[:-keep] if keep > 0 else []:
        f.unlink()
