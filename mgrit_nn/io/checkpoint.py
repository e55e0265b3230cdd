"""Checkpoint files: one HDF5 file per saved step, written by rank 0 from a nested dict.

This module knows the file format only (groups, attributes, atomic write, checksum),
not what a trainer or a method puts in it (:mod:`mgrit_nn.train.checkpoint`).
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

import gc
import hashlib
import io
import os
import re
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import torch

from mgrit_nn import __version__
from mgrit_nn.runtime import CheckpointError, OutputError

__all__ = ["CheckpointError", "checkpoint_path", "flatten", "latest_checkpoint", "open_checkpoint",
           "prune", "write_checkpoint"]


def _digest(f: h5py.File) -> str:
    h = hashlib.sha256()

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            h.update(name.encode())
            h.update(np.ascontiguousarray(obj[()]).tobytes())
    f.visititems(visit)
    return h.hexdigest()


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested dict of arrays as ``{"group/sub/name": array}`` (HDF5 paths)."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = value.numpy() if torch.is_tensor(value) else np.asarray(value)
    return out


# What h5py raises when the disk is full: OSError from file operations, RuntimeError
# from HDF5's metadata flush or close ("file write failed ... errno = 28").
WRITE_ERRORS = (OSError, RuntimeError)


@contextmanager
def quiet_failed_writes():
    """After a failed write, h5py's objects fail again as they are freed, and each prints a
    traceback ("Exception ignored in ... __dealloc__"): dozens of lines for one full disk.
    They are dropped here; the caller reports the one failure."""
    hook, stderr = sys.unraisablehook, sys.stderr

    def drop_h5py(info) -> None:
        if "h5py" not in repr(getattr(info, "object", "")):
            hook(info)
    sys.unraisablehook, sys.stderr = drop_h5py, io.StringIO()
    try:
        yield
    except BaseException:
        gc.collect()        # free the failed write's objects while their noise is dropped
        raise               # (a collection costs ~0.15 s with torch loaded: never per step)
    finally:
        sys.unraisablehook, sys.stderr = hook, stderr


def write_failure(exc: BaseException) -> str:
    """One line saying why a write failed. The first exception of the chain (h5py's close
    after a failed write raises again, with a message that no longer says why), and of an
    HDF5 message, its errno part: ``[Errno 28] No space left on device (Unable to flush
    file)``."""
    while exc.__context__ is not None:
        exc = exc.__context__
    text = " ".join(str(exc).split())
    m = re.search(r"errno = (\d+), error message = '([^']*)'", text)
    return f"[Errno {m[1]}] {m[2]} ({text.split(' (')[0]})" if m else text


def free_space(path: Path) -> str:
    """``"N MiB free"`` on the file system of ``path`` (for a failed write's message)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return "free space unknown"
    return f"{st.f_bavail * st.f_frsize / 2**20:.1f} MiB free"


def write_checkpoint(path: Path, tree: Mapping, attrs: dict) -> Path:
    """Write a nested dict of arrays as HDF5 groups and datasets, atomically: temporary
    file, flush, fsync, rename (rank 0 only). A failed write (disk full) removes the
    temporary file and raises OutputError: the previous checkpoints are untouched."""
    tmp, arrays = path.with_name(path.name + ".tmp"), flatten(tree)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_failed_writes(), h5py.File(tmp, "w") as f:
            for name, a in arrays.items():
                f.create_dataset(name, data=a)
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["version"] = __version__
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
    except WRITE_ERRORS as exc:
        tmp.unlink(missing_ok=True)
        older = sorted(path.parent.glob("step_*.h5"))
        raise OutputError(f"cannot write the checkpoint {path} ({free_space(path.parent)}): "
                          f"{write_failure(exc)}; the newest complete one is "
                          f"{older[-1].name if older else 'none'}") from None
    return path


def open_checkpoint(path: str | Path, checksum: bool = True) -> h5py.File:
    """Open and verify a checkpoint (completeness marker and, unless ``checksum`` is false
    because the caller has just verified it, the checksum: a read of every dataset)."""
    p = Path(path)
    why = h5_problem(p)
    if why is not None:
        raise CheckpointError(f"checkpoint {p} {why}")
    try:      # no file lock: a finished checkpoint never changes (and info holds it open so)
        f = h5py.File(p, "r", locking=False)
    except OSError:
        raise CheckpointError(f"checkpoint {p} cannot be read: a damaged or truncated HDF5 "
                              "file") from None
    if "steps" in f and "model" not in f:
        f.close()
        raise CheckpointError(f"{p} is a history file, not a checkpoint (checkpoints are in "
                              f"{p.parent / 'checkpoints'})")
    if f.attrs.get("complete") != 1 or "model" not in f:
        f.close()
        raise CheckpointError(f"checkpoint {p} is incomplete (the write did not finish)")
    if checksum and _digest(f) != f.attrs.get("sha256"):
        f.close()
        raise CheckpointError(f"checkpoint {p} is corrupt: its checksum does not match")
    return f


def h5_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an HDF5 file we read (None: it may be), in words."""
    if path.is_dir():
        return "is a directory, not a file"
    if not path.is_file():
        return "does not exist"
    if not h5py.is_hdf5(path):
        return "is not an HDF5 file (empty, truncated, or another format)"
    return None


def checkpoint_path(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:08d}.h5"


def latest_checkpoint(out: Path, verify=None) -> tuple[Path, list[str]]:
    """The newest checkpoint in ``out/checkpoints`` that ``verify(path)`` accepts (it raises
    CheckpointError otherwise), and one line for every newer one it skipped, saying why."""
    files = sorted((out / "checkpoints").glob("step_*.h5"))
    if not files:
        raise CheckpointError(f"--resume latest: no checkpoint in {out / 'checkpoints'}")
    skipped = []
    for path in reversed(files):
        try:
            if verify is not None:
                verify(path)
            return path, skipped
        except CheckpointError as exc:
            skipped.append(f"skipped {path.name}: {exc}")
    raise CheckpointError("--resume latest: no usable checkpoint in "
                          f"{out / 'checkpoints'} ({'; '.join(skipped)})")


def remove_stale(out: Path) -> list[Path]:
    """Delete ``step_*.h5.tmp`` files a crashed write left in ``out/checkpoints``."""
    stale = sorted((out / "checkpoints").glob("step_*.h5.tmp"))
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def prune(out: Path, keep: int) -> None:
    files = sorted((out / "checkpoints").glob("step_*.h5"))
    for f in files[:-keep] if keep > 0 else []:
        f.unlink()
