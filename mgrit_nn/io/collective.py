"""Checkpoints written collectively: all ranks write their rows into one file (mpio).

Where h5py is built against a parallel HDF5 (``h5py.get_config().mpi``; docs/hdf5.md says
how to build one), ``checkpoint.layout: auto`` on more than one layer rank (or
``collective``) writes one ordinary checkpoint file, the layout of a single one, through
HDF5's ``mpio`` driver: every rank creates the same datasets (collective metadata), then
writes its own :class:`~mgrit_nn.parts.Part` s into them; rank 0 writes what it holds whole.
No rank holds more than its own rows. Rank 0 then reads the file back in blocks for its
checksum (memory bounded by :data:`~mgrit_nn.io.checkpoint.DIGEST_BLOCK`), marks it
complete and renames it: as for a single file, a crash at any moment leaves the previous
checkpoint as it was and at most a ``.tmp`` the next run removes.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from mgrit_nn import __version__
from mgrit_nn.io.checkpoint import (
    WRITE_ERRORS,
    digest,
    fsync,
    part_meta,
    quiet_failed_writes,
    write_error,
)
from mgrit_nn.parts import Part

__all__ = ["available", "write_collective"]


def available() -> bool:
    """Whether this h5py can write one file from many ranks (built with MPI)."""
    return bool(h5py.get_config().mpi)


def write_collective(path: Path, leaves: dict, attrs: dict, comm) -> Path | None:
    """Collective over the writing ranks ``comm``; returns ``path`` on rank 0 (None
    elsewhere). A failed write raises OutputError on the rank that saw it (the job is
    aborted); the previous checkpoints are untouched."""
    rank = comm.Get_rank()
    parts = {k: v for k, v in leaves.items() if isinstance(v, Part)}
    metas = comm.allgather(part_meta(parts))        # checkpoint only: small pickles
    plain = {k: v for k, v in leaves.items() if not isinstance(v, Part)}
    shapes = comm.bcast({k: (v.shape, v.dtype.str) for k, v in plain.items()}
                        if rank == 0 else None, root=0)
    attrs = comm.bcast(attrs if rank == 0 else None, root=0)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        comm.Barrier()
        with quiet_failed_writes(), h5py.File(tmp, "w", driver="mpio", comm=comm) as f:
            for name in sorted({k for m in metas for k in m}):       # the same on every rank
                _, _, rows, row, dtype = next(m[name] for m in metas if name in m)
                f.create_dataset(name, shape=(rows,) + tuple(row), dtype=np.dtype(dtype))
            for name, (shape, dtype) in sorted(shapes.items()):
                f.create_dataset(name, shape=shape, dtype=np.dtype(dtype))
            for name, p in parts.items():                           # independent writes
                if len(p.data):
                    f[name][p.start:p.start + len(p.data)] = p.data
            if rank == 0:
                for name, a in plain.items():
                    f[name][...] = a
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["version"], f.attrs["layout"] = __version__, "collective"
    except WRITE_ERRORS as exc:
        if rank == 0:
            tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    comm.Barrier()                                  # every rank's rows are in the file
    if rank != 0:
        return None
    try:
        with quiet_failed_writes(), h5py.File(tmp, "r+") as f:
            f.attrs["sha256"] = digest(f)
            f.attrs["complete"] = 1
        fsync(tmp)
        tmp.replace(path)
        fsync(path.parent)
    except WRITE_ERRORS as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    return path
