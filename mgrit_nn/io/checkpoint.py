"""Checkpoint files: one HDF5 file per saved step, from a nested dict of arrays and Parts.

This module knows the file format only (groups, attributes, atomic write, checksum),
not what a trainer or a method puts in it (:mod:`mgrit_nn.train.checkpoint`). A tree's
leaves are arrays (rank 0's value is written) or :class:`Part` s (each rank's rows of a
global array). On one writer, or with ``checkpoint.layout: single``, the Parts are gathered
on rank 0 and it writes one file; otherwise every rank writes its own shard and rank 0 a
main file of virtual datasets (:mod:`mgrit_nn.io.shards`). Either way a reader sees one
file with the layout (users' scripts rely on it; see docs/hdf5.md):

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
import math
import os
import re
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import torch
from mpi4py import MPI

from mgrit_nn import __version__
from mgrit_nn.parts import Part
from mgrit_nn.runtime import CheckpointError, OutputError

__all__ = ["CheckpointError", "Part", "checkpoint_path", "flatten", "latest_checkpoint",
           "open_checkpoint", "prune", "write_checkpoint"]


DIGEST_BLOCK = 64 * 2**20     # bytes of a dataset read at once to checksum it


def digest(f: h5py.File) -> str:
    """sha256 over the names and bytes of a file's own datasets (virtual ones, which a
    sharded checkpoint's main file maps onto its shards, are each shard's to check). A big
    dataset is read in blocks of rows: the memory stays bounded, the sum is the same."""
    h = hashlib.sha256()

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and not obj.is_virtual:
            h.update(name.encode())
            if obj.ndim == 0 or obj.size == 0:
                h.update(np.ascontiguousarray(obj[()]).tobytes())
                return
            rows = max(1, DIGEST_BLOCK // max(1, obj.dtype.itemsize * obj.size // len(obj)))
            for lo in range(0, len(obj), rows):
                h.update(np.ascontiguousarray(obj[lo:lo + rows]).tobytes())
    f.visititems(visit)
    return h.hexdigest()


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray | Part]:
    """A nested dict of arrays and Parts as ``{"group/sub/name": leaf}`` (HDF5 paths)."""
    out: dict[str, np.ndarray | Part] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "/"))
        elif isinstance(value, Part):
            out[path] = value
        else:
            out[path] = value.numpy() if torch.is_tensor(value) else np.asarray(value)
    return out


def part_meta(leaves: Mapping) -> dict[str, tuple]:
    """``{name: (start, local rows, global rows, row shape, dtype)}`` of this rank's Parts
    (small, to gather)."""
    return {k: (p.start, len(p.data), p.rows, p.data.shape[1:], p.data.dtype.str)
            for k, p in leaves.items() if isinstance(p, Part)}


def assemble(leaves: dict, comm) -> dict[str, np.ndarray] | None:
    """Every rank's Parts stitched into their global arrays on rank 0 (None elsewhere); the
    other leaves as rank 0 has them. Collective over ``comm`` (the writing ranks): one
    gather of the Parts' shapes, then one Gatherv per distributed dataset."""
    rank, size = comm.Get_rank(), comm.Get_size()
    metas = comm.gather(part_meta(leaves), root=0)      # checkpoint only: small pickles
    names = comm.bcast(sorted({k for m in metas for k in m}) if rank == 0 else None, root=0)
    out = {k: v for k, v in leaves.items() if not isinstance(v, Part)}
    for name in names:
        p = leaves.get(name)
        send = np.ascontiguousarray(p.data) if p is not None else np.zeros(0)
        if rank == 0:
            owners = {r: m[name] for r, m in enumerate(metas) if name in m}
            _, _, rows, row, dtype = next(iter(owners.values()))
            full = np.empty((rows,) + tuple(row), dtype=np.dtype(dtype))
            width = full.itemsize * math.prod(row)
        width = comm.bcast(width if rank == 0 else None, root=0)
        if width:          # one row as an MPI type: counts in rows stay far below 2**31
            row_t = MPI.BYTE.Create_contiguous(width).Commit()
            recv = None
            if rank == 0:
                counts, displs = [0] * size, [0] * size
                for r, (start, n, *_) in owners.items():
                    counts[r], displs[r] = n, start
                recv = [full.view(np.uint8).ravel(), counts, displs, row_t]
            comm.Gatherv([send.view(np.uint8).ravel(), len(send), row_t], recv, root=0)
            row_t.Free()
        if rank == 0:
            out[name] = full
    return out if rank == 0 else None


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


def whole(leaves: Mapping) -> dict[str, np.ndarray]:
    """The leaves of one writer, whose Parts are whole arrays."""
    return {k: v.data if isinstance(v, Part) else v for k, v in leaves.items()}


def write_checkpoint(path: Path, tree: Mapping, attrs: dict, comm=None,
                     layout: str = "single") -> Path | None:
    """Write a nested dict of arrays and Parts as one checkpoint: collective over ``comm``
    (the writing ranks; None: this process alone). With more than one writer, ``layout``
    (``checkpoint.layout``) ``collective``: one file through HDF5's mpio driver
    (:mod:`mgrit_nn.io.collective`); ``sharded``: one shard per rank and a main file of
    virtual datasets (:mod:`mgrit_nn.io.shards`); ``auto``: collective where h5py is built
    with MPI, else sharded; ``single``: the Parts are gathered on rank 0, which writes one
    file. Returns the path on rank 0 (None on the other ranks)."""
    from mgrit_nn.io import collective

    leaves = flatten(tree)
    if comm is not None and comm.Get_size() > 1:
        if layout == "auto":
            layout = "collective" if collective.available() else "sharded"
        if layout == "collective":
            return collective.write_collective(path, leaves, attrs, comm)
        if layout == "sharded":
            from mgrit_nn.io.shards import write_sharded

            return write_sharded(path, leaves, attrs, comm)
        arrays = assemble(leaves, comm)
        if arrays is None:
            return None
    else:
        arrays = whole(leaves)
    return write_file(path, arrays, attrs)


def write_file(path: Path, arrays: Mapping, attrs: dict, virtual=None) -> Path:
    """One HDF5 file from ``{name: array}``, atomically: temporary file, flush, fsync,
    rename. ``virtual(f)`` adds a sharded checkpoint's virtual datasets. A failed write
    (disk full) removes the temporary file and raises OutputError: the previous checkpoints
    are untouched."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_failed_writes(), h5py.File(tmp, "w") as f:
            for name, a in arrays.items():
                f.create_dataset(name, data=a)
            if virtual is not None:
                virtual(f)
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["version"] = __version__
            f.attrs["sha256"] = digest(f)
            f.attrs["complete"] = 1
            f.flush()
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    except WRITE_ERRORS as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    return path


def fsync(path: Path) -> None:
    """Flush a file or a folder (a rename in it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path: Path, exc: BaseException) -> OutputError:
    """The one line of a failed checkpoint write, naming the newest complete checkpoint."""
    older = sorted(path.parent.glob("step_*.h5"))
    return OutputError(f"cannot write the checkpoint {path} ({free_space(path.parent)}): "
                       f"{write_failure(exc)}; the newest complete one is "
                       f"{older[-1].name if older else 'none'}")


def open_checkpoint(path: str | Path, checksum: bool = True, shards: bool = True) -> h5py.File:
    """Open and verify a checkpoint (completeness marker and, unless ``checksum`` is false
    because the caller has just verified it, the checksum: a read of every dataset); of a
    sharded one also every shard (``shards``: false when the caller checks them)."""
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
    if checksum and digest(f) != f.attrs.get("sha256"):
        f.close()
        raise CheckpointError(f"checkpoint {p} is corrupt: its checksum does not match")
    if shards:
        from mgrit_nn.io.shards import shard_problem

        why = shard_problem(p, f, checksum=checksum)
        if why is not None:
            f.close()
            raise CheckpointError(why)
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
    """Delete what a crashed write left in ``out/checkpoints``: ``step_*.h5.tmp`` files and
    shard folders no checkpoint names."""
    from mgrit_nn.io.shards import remove_orphans

    stale = sorted((out / "checkpoints").glob("step_*.h5.tmp"))
    for f in stale:
        f.unlink(missing_ok=True)
    return stale + remove_orphans(out / "checkpoints")


def prune(out: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (0: all); an older one goes whole, main file
    first, then its shard folder."""
    import shutil

    from mgrit_nn.io.shards import shard_folder

    files = sorted((out / "checkpoints").glob("step_*.h5"))
    for f in files[:-keep] if keep > 0 else []:
        try:
            with h5py.File(f, "r", locking=False) as h:
                folder = shard_folder(f, h)
        except OSError:
            folder = None
        f.unlink()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
