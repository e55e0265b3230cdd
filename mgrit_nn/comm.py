"""Buffer-based tensor messages (design §9): no pickling on the hot path.

CPU tensors are sent straight from their memory. CUDA tensors are staged
through pinned host buffers unless the MPI library is CUDA-aware.
The message dtype is the tensor's dtype (the model dtype).
"""

from __future__ import annotations

import time
from enum import IntEnum

import numpy as np
import torch
from mpi4py import MPI


class Tag(IntEnum):
    """Every point-to-point message tag of the package, in one place (no two uses collide)."""

    SWEEP = 1            # MGRIT relaxation sweep on level l: SWEEP + LEVEL_STRIDE * l
    EVAL = 2             # MGRIT evaluation (C-relaxation, residual) on level l: EVAL + 8 l
    GHOST = 5            # the ghost state (left neighbour's last point) of level 0
    FINAL_STATE = 7      # mgrit-nn check: u_N from the last rank to rank 0
    LAYERS = 64          # layer weights for the coarse-level layer table
    STAGE_RIGHT = 301    # stage-parallel methods: end state to the right neighbour
    STAGE_LEFT = 302     # stage-parallel methods: (auxiliary) state / co-state to the left
    CRITIC_LOSS = 303    # local_critic: L_{i+1} to the left neighbour
    CRITIC_EVAL = 304    # local_critic: states of the evaluation sweep
    PINGPONG = 305       # mgrit-nn bench: the latency / bandwidth ping-pong of ranks 0 and 1


LEVEL_STRIDE = 8         # per-level tags: SWEEP/EVAL + LEVEL_STRIDE * l never hit another tag


class Timers:
    """Seconds spent per phase on this rank (compute vs. communication vs. waiting)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt


class _Recv:
    def __init__(self, req: MPI.Request, host: torch.Tensor | None, out: torch.Tensor,
                 msg: Messenger, source: int, tag: int) -> None:
        self.req, self.host, self.out, self.timers = req, host, out, msg.timers
        self.trace, self.source, self.tag = msg.trace, source, tag

    def wait(self) -> torch.Tensor:
        if self.trace is not None:
            self.trace.recv(self.source, self.tag, self.out.numel() * self.out.element_size())
        t0 = time.perf_counter()
        self.req.Wait()
        self.timers.add("wait", time.perf_counter() - t0)
        if self.trace is not None:
            self.trace.resume()
        if self.host is not None:
            self.out.copy_(self.host, non_blocking=False)
        return self.out


class _Send:
    def __init__(self, req: MPI.Request, keep: torch.Tensor, timers: Timers) -> None:
        self.req, self.keep, self.timers = req, keep, timers

    def wait(self) -> None:
        t0 = time.perf_counter()
        self.req.Wait()
        self.timers.add("wait", time.perf_counter() - t0)


class Messenger:
    """Non-blocking point-to-point messages of contiguous tensors."""

    def __init__(self, comm: MPI.Comm, cuda_aware: bool = False) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.cuda_aware = cuda_aware
        self.timers = Timers()
        self.sent_bytes = 0          # point-to-point payload posted by this rank (isend)
        self.trace = None            # a perfmodel.trace.Trace recording this rank's schedule

    def _staged(self, t: torch.Tensor) -> bool:
        return t.is_cuda and not self.cuda_aware

    @staticmethod
    def _buffer(t: torch.Tensor):
        if t.is_cuda:  # CUDA-aware MPI reads device memory through __cuda_array_interface__
            return t
        return t.numpy()

    def isend(self, t: torch.Tensor, dest: int, tag: int) -> _Send:
        t = t.detach()
        if self._staged(t):
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t)
            t = host
        elif not t.is_contiguous():
            t = t.contiguous()
        self.sent_bytes += t.numel() * t.element_size()
        if self.trace is not None:
            self.trace.send(dest, tag, t.numel() * t.element_size())
        t0 = time.perf_counter()
        req = self.comm.Isend(self._buffer(t), dest=dest, tag=tag)
        self.timers.add("comm", time.perf_counter() - t0)
        return _Send(req, t, self.timers)

    def irecv(self, out: torch.Tensor, source: int, tag: int) -> _Recv:
        """Receive into ``out`` (contiguous); the data is there after ``wait()``."""
        host = None
        buf = out
        if self._staged(out):
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            buf = host
        req = self.comm.Irecv(self._buffer(buf), source=source, tag=tag)
        return _Recv(req, host, out, self, source, tag)

    def allreduce_sum(self, value: float) -> float:
        """The sum of one float over all ranks, bitwise the same on every rank."""
        return self.allreduce_sums([value])[0]

    def allreduce_sums(self, values: list[float]) -> list[float]:
        """The sums of a few floats over all ranks, bitwise the same on every rank.

        MPI_Allreduce may add in a different order on different ranks (e.g. on 3
        ranks), and decisions taken on the result (stop iterating, accept a line-search
        step) must agree everywhere: gather all values and add them in rank order.
        """
        n = len(values)
        buf = np.empty((self.size, n), dtype=np.float64)
        self._reduction(8 * n)
        t0 = time.perf_counter()
        self.comm.Allgather(np.array(values, dtype=np.float64), buf)
        self.timers.add("comm", time.perf_counter() - t0)
        self._reduced()
        return [float(sum(col)) for col in buf.T.tolist()]

    def _reduction(self, nbytes: int) -> None:
        if self.trace is not None:
            self.trace.reduce(nbytes)

    def _reduced(self) -> None:
        if self.trace is not None:
            self.trace.resume()

    def allreduce_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all ranks in place, the same bits on every rank (Reduce + Bcast)."""
        host = t.detach().cpu().contiguous() if t.is_cuda or not t.is_contiguous() else t.detach()
        self._reduction(host.numel() * host.element_size())
        t0 = time.perf_counter()
        buf = host.numpy()
        if self.rank == 0:
            self.comm.Reduce(MPI.IN_PLACE, buf, op=MPI.SUM, root=0)
        else:
            self.comm.Reduce(buf, None, op=MPI.SUM, root=0)
        self.comm.Bcast(buf, root=0)
        self.timers.add("comm", time.perf_counter() - t0)
        self._reduced()
        if host is not t:
            t.copy_(host)
        return t

    def bcast_tensor(self, t: torch.Tensor, root: int) -> torch.Tensor:
        """Broadcast ``t`` (same shape/dtype on every rank) from ``root`` in place."""
        host = t.detach().cpu() if t.is_cuda else t.detach()
        if not host.is_contiguous():
            host = host.contiguous()
        self._reduction(host.numel() * host.element_size())
        self.comm.Bcast(host.numpy(), root=root)
        self._reduced()
        if host is not t:
            t.copy_(host)
        return t
