"""MPI runtime: ranks, devices, dtype, and the failure rules (design §9, §10).

Every rank failure aborts the whole job promptly with that rank's message
shown once; configuration errors are agreed on by all ranks and printed once
by rank 0, and every rank exits with status 2.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager

import numpy as np
import torch
from mpi4py import MPI

from mgrit_nn.config import ConfigError

EXIT_CONFIG = 2


class CollectiveError(RuntimeError):
    """An error that every rank raises at the same point (e.g. a NaN in an
    all-reduced residual): printed once by rank 0, every rank exits with 1."""
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def world() -> MPI.Comm:
    return MPI.COMM_WORLD


def select_device(kind: str, comm: MPI.Comm | None = None) -> torch.device:
    """The node-local rank's GPU modulo the visible GPUs (design §9), else the CPU."""
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("runtime.device: cuda requested but no CUDA device is visible")
    comm = comm or world()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        index = local.Get_rank() % torch.cuda.device_count()
    finally:
        local.Free()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def cuda_aware_mpi(setting: bool | None = None) -> bool:
    """Whether the MPI library can send from and receive into GPU memory.

    ``setting`` (``runtime.cuda_aware``) wins when given. Otherwise: the library's own
    answer, ``MPIX_Query_cuda_support()`` (Open MPI, MPICH >= 4, MVAPICH), looked up in
    the already loaded MPI library, else the switches that turn it on at run time (Cray
    MPICH ``MPICH_GPU_SUPPORT_ENABLED=1``, MVAPICH ``MV2_USE_CUDA=1``). Unknown means
    no: messages are then staged through pinned host buffers, which always works.
    """
    if setting is not None:
        return bool(setting)
    import ctypes

    try:
        query = ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support   # via mpi4py's libmpi
        query.restype = ctypes.c_int
        return bool(query())
    except (AttributeError, OSError):
        pass
    return os.environ.get("MPICH_GPU_SUPPORT_ENABLED") == "1" or \
        os.environ.get("MV2_USE_CUDA") == "1"


@functools.cache
def node_ranks() -> int:
    """Ranks of the whole job on this node: from the launcher's environment (MPICH,
    Open MPI, MVAPICH, SLURM) or else one collective on COMM_WORLD, on first call."""
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    n = local.Get_size()
    local.Free()
    return n


def split_replicas(comm: MPI.Comm, replicas: int) -> tuple[MPI.Comm, MPI.Comm]:
    """The one place ranks are split into D data replicas of a layer-parallel group.

    Returns (layer comm: the ranks of my replica, in time order; data comm: the
    ranks holding the same layers in every replica)."""
    rank, L = comm.Get_rank(), comm.Get_size() // replicas
    return comm.Split(rank // L, rank % L), comm.Split(rank % L, rank // L)


EXIT_STOPPED = 75     # stopped by SIGTERM/SIGUSR1 after writing a checkpoint: resume me


class StopSignal:
    """SIGTERM / SIGUSR1 (SLURM --signal, preemption) and SIGINT (Ctrl-C, which mpiexec
    forwards to every rank) ask to stop after the current step: every rank finishes it, a
    checkpoint is written, the job exits with status 75. A second SIGINT ends this process
    at once (status 130; mpiexec then ends the others)."""

    def __init__(self) -> None:
        self.received = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            os.write(2, b"mgrit-nn: second interrupt: stopping now, without a checkpoint\n")
            os._exit(130)
        if signum == signal.SIGINT and not self.received:
            os.write(2, b"mgrit-nn: interrupt: stopping after this step (checkpoint); "
                        b"press Ctrl-C again to stop at once\n")
        self.received = signum

    def any_rank(self, comm: MPI.Comm) -> bool:
        """Whether any rank got a signal (one small Allreduce, every rank calls it)."""
        buf = np.array([self.received], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)
        return bool(buf[0])


def say(text: str, comm: MPI.Comm | None = None, file=None) -> None:
    """Print once, on rank 0 (to ``file``, by default the sys.stderr of the time of the call)."""
    if (comm or world()).Get_rank() == 0:
        print(text, file=file or sys.stderr, flush=True)


class UsageError(RuntimeError):
    """A problem with what the user asked for (e.g. an unusable checkpoint): exit status 2."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be used (missing, corrupt, or of another network)."""


EXIT_OUTPUT = 74      # an output file could not be written (disk full, quota): EX_IOERR


class OutputError(RuntimeError):
    """A file of the run could not be written (disk full, quota, permissions), raised on
    the writing rank (rank 0): the job stops at once with this one message, status 74.
    What was written before stays readable."""


def agree_on_config(build, comm: MPI.Comm | None = None):
    """Run ``build()`` on every rank; if it raises ConfigError or UsageError on any rank,
    rank 0 prints the lowest rank's message once and every rank exits with 2."""
    comm = comm or world()
    result, error = None, None
    try:
        result = build()
    except ConfigError as exc:
        error = f"config error: {exc}"
    except UsageError as exc:
        error = str(exc)
    errors = comm.allgather(error)      # startup only: a small pickled list is fine here
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        say(f"mgrit-nn: {first}", comm)
        sys.exit(EXIT_CONFIG)
    return result


def idle_barrier(comm: MPI.Comm) -> None:
    """A barrier that sleeps instead of spinning, leaving the cores to the working rank."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.01)


ABORT_GRACE_S = 0.5


def _take_down(comm: MPI.Comm, line: str, code: int) -> None:
    """Print this rank's one line, then end the job with ``code``.

    The line reaches the launcher through a pipe that the launcher polls
    alongside the abort request; a launcher that handles the abort first kills
    the job with the line unread (seen once in CI: exit status right, message
    gone). So the line is written straight to the file descriptor and the
    launcher is given ``ABORT_GRACE_S`` to forward it before the abort.
    """
    sys.stderr.flush()
    os.write(2, (line + "\n").encode(errors="replace"))
    if comm.Get_size() > 1:
        time.sleep(ABORT_GRACE_S)
        comm.Abort(code)
    sys.exit(code)


@contextmanager
def abort_on_error(comm: MPI.Comm | None = None):
    """An uncaught exception on this rank aborts every rank (no hang).

    Prints ``mgrit-nn: rank r/P failed: Type: message`` once; the full
    traceback only with ``MGRIT_NN_TRACEBACK=1``.
    """
    comm = comm or world()
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        raise
    except CollectiveError as exc:
        if os.environ.get("MGRIT_NN_TRACEBACK") == "1":
            traceback.print_exc()
        say(f"mgrit-nn: error: {exc}", comm)
        sys.exit(1)
    except OutputError as exc:           # one rank (the writer): take the others down
        _take_down(comm, f"mgrit-nn: error: {exc}", EXIT_OUTPUT)
    except BaseException as exc:  # noqa: BLE001 - any failure must take the job down
        rank, size = comm.Get_rank(), comm.Get_size()
        if os.environ.get("MGRIT_NN_TRACEBACK") == "1":
            traceback.print_exc()
        _take_down(comm, f"mgrit-nn: rank {rank}/{size} failed: {type(exc).__name__}: {exc}", 1)
