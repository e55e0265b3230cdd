"""Sharded checkpoints: every rank writes its own rows, rank 0 a main file that maps them.

A checkpoint written by P > 1 ranks (``checkpoint.layout: sharded``, the default there) is

    OUT/checkpoints/step_XXXXXXXX.h5                  the main file
    OUT/checkpoints/step_XXXXXXXX.<id>.shards/rank_RRRRR.h5   one shard per writing rank

Each shard holds the rank's :class:`~mgrit_nn.parts.Part` s under their global
names (its own rows only). The main file holds what rank 0 writes whole (the RNG state, the
history rows, the method's small arrays) and, for every distributed dataset, an HDF5
*virtual dataset* of the global shape whose row ranges map onto the shards. So a plain
serial h5py reader opens one file and sees the documented layout (``/model/layers/NNNNN``,
``/optimizer/<name>``, ``/warm/...``), and a rank that resumes reads only its own rows.

Atomicity: the shards go into a folder of a new name, each is flushed and fsync'ed, then rank
0 writes the main file under a temporary name and renames it: that rename makes the
checkpoint. A crash before it leaves a folder no main file names (removed by the next run,
:func:`remove_orphans`) and the previous checkpoint as it was. The main file records each
shard's sha256; a missing or altered shard makes the checkpoint refused, never read as fill
values.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import h5py
import numpy as np

from mgrit_nn.io.checkpoint import (
    WRITE_ERRORS,
    digest,
    fsync,
    h5_problem,
    part_meta,
    quiet_failed_writes,
    write_error,
    write_file,
)
from mgrit_nn.parts import Part
from mgrit_nn.runtime import OutputError

__all__ = ["orphans", "remove_orphans", "shard_folder", "shard_problem", "write_sharded"]


def write_sharded(path: Path, leaves: dict, attrs: dict, comm) -> Path | None:
    """Collective over the writing ranks ``comm``: this rank's shard, then rank 0's main file.
    Returns ``path`` on rank 0 (None elsewhere). A failed write (disk full) on any rank
    raises OutputError on rank 0, which says it once and aborts the job; the previous
    checkpoints are untouched."""
    rank = comm.Get_rank()
    folder = path.parent / comm.bcast(f"{path.stem}.{uuid.uuid4().hex[:8]}.shards"
                                      if rank == 0 else None, root=0)
    if rank == 0:
        try:
            folder.mkdir(parents=True)
        except WRITE_ERRORS as exc:
            raise write_error(path, exc) from None
    comm.Barrier()
    parts = {k: v for k, v in leaves.items() if isinstance(v, Part)}
    try:
        sha, error = _write_shard(path, folder / shard_name(rank), parts), None
    except OutputError as exc:
        sha, error = "", str(exc)
    metas = comm.gather((part_meta(parts), sha, error), root=0)   # checkpoint only: small
    failed = comm.bcast(next((e for _, _, e in metas if e), None) if rank == 0 else None,
                        root=0)
    if failed is not None:      # rank 0 says it once, keeps the run folder's lock in order
        if rank == 0:           # and aborts the job; the others wait for that
            shutil.rmtree(folder, ignore_errors=True)
            raise OutputError(failed)
        comm.Barrier()
    if rank != 0:
        return None
    try:
        fsync(folder)
    except WRITE_ERRORS as exc:
        raise write_error(path, exc) from None
    plain = {k: v for k, v in leaves.items() if not isinstance(v, Part)}
    main_attrs = {**attrs, "layout": "sharded", "shards_dir": folder.name,
                  "shards_sha256": np.array([s for _, s, _ in metas], dtype=h5py.string_dtype())}
    write_file(path, plain, main_attrs, lambda f: _map(f, folder.name, [m for m, _, _ in metas]))
    for old in path.parent.glob(f"{path.stem}.*.shards"):   # of a checkpoint just replaced
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return path


def shard_name(rank: int) -> str:
    return f"rank_{rank:05d}.h5"


def _write_shard(path: Path, shard: Path, parts: dict[str, Part]) -> str:
    """Write and fsync one rank's shard; its checksum."""
    try:
        with quiet_failed_writes(), h5py.File(shard, "w") as f:
            for name, p in parts.items():
                f.create_dataset(name, data=p.data)
            sha = digest(f)
            f.attrs["sha256"], f.attrs["complete"] = sha, 1
        fsync(shard)
    except WRITE_ERRORS as exc:
        raise write_error(path, exc) from None
    return sha


def _map(f: h5py.File, folder: str, metas: list[dict]) -> None:
    """The main file's virtual datasets: each global array's row ranges onto the shards
    (paths relative to the main file, so the checkpoint can be moved with its folder)."""
    for name in sorted({k for m in metas for k in m}):
        owners = [(r, m[name]) for r, m in enumerate(metas) if name in m]
        _, _, rows, row, dtype = owners[0][1]
        shape = (rows,) + tuple(row)
        if rows == 0:
            f.create_dataset(name, shape=shape, dtype=np.dtype(dtype))
            continue
        layout = h5py.VirtualLayout(shape=shape, dtype=np.dtype(dtype))
        for r, (start, n, *_) in owners:
            if n:
                layout[start:start + n] = h5py.VirtualSource(
                    f"{folder}/{shard_name(r)}", name, shape=(n,) + tuple(row))
        f.create_virtual_dataset(name, layout)


def shard_folder(path: Path, f: h5py.File) -> Path | None:
    """The shard folder a main file names (None: a single-file checkpoint)."""
    name = f.attrs.get("shards_dir")
    return None if name is None else Path(path).parent / str(name)


def shard_problem(path: Path, f: h5py.File, rank: int = 0, size: int = 1,
                  checksum: bool = True) -> str | None:
    """Why the shards of the main file ``f`` cannot be read (None: they can), checking the
    shards ``i`` with ``i % size == rank`` (so P ranks share the reading)."""
    folder = shard_folder(path, f)
    if folder is None:
        return None
    shas = [s.decode() if isinstance(s, bytes) else str(s) for s in f.attrs["shards_sha256"]]
    for i in range(rank, len(shas), size):
        shard = folder / shard_name(i)
        why = h5_problem(shard)
        if why is not None:
            return (f"checkpoint {path}: its shard {shard} {why} (a sharded checkpoint is the "
                    f"file and the folder {folder.name} beside it: copy or move both)")
        try:
            with h5py.File(shard, "r", locking=False) as s:
                if s.attrs.get("complete") != 1 or s.attrs.get("sha256") != shas[i] or \
                        (checksum and digest(s) != shas[i]):
                    return f"checkpoint {path}: its shard {shard} is corrupt (checksum)"
        except OSError:
            return f"checkpoint {path}: its shard {shard} is damaged or truncated"
    return None


def orphans(folder: Path) -> list[Path]:
    """The shard folders in ``folder`` that no main file names (left by a write that crashed
    before its main file, or by a prune that crashed in between)."""
    named, unreadable = set(), set()
    for main in folder.glob("step_*.h5"):
        try:
            with h5py.File(main, "r", locking=False) as f:
                named.add(str(f.attrs.get("shards_dir", "")))
        except OSError:
            unreadable.add(main.stem)             # keep what it might name
    return [d for d in sorted(folder.glob("step_*.shards"))
            if d.name not in named and d.name.split(".")[0] not in unreadable]


def remove_orphans(folder: Path) -> list[Path]:
    """Delete the :func:`orphans` of ``folder``; returns them."""
    found = orphans(folder)
    for d in found:
        shutil.rmtree(d, ignore_errors=True)
    return found
