"""P virtual ranks in one process: the solver's own schedule for rank counts this machine
does not have.

Every virtual rank is a thread running the real code (network, solvers, method) with a
:class:`VirtualComm` in place of its MPI communicator: point-to-point messages are copied
through per-(source, destination, tag) queues, collectives meet at a barrier. The results
are those of an MPI run (the same data moves); only the timing is meaningless, which is
why the threads record a :class:`~mgrit_nn.perfmodel.trace.Trace` (kernel and element
counts) for :mod:`~mgrit_nn.perfmodel.replay` to price. A failing rank breaks the
barrier and every queue wait, so a failure ends the recording instead of hanging it.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from dataclasses import replace

import numpy as np
import torch
from mpi4py import MPI

from mgrit_nn.comm import Messenger
from mgrit_nn.perfmodel.trace import Trace

TIMEOUT_S = 600.0


class _World:
    def __init__(self, size: int) -> None:
        self.size = size
        self.queues: dict = defaultdict(deque)
        self.lock = threading.Lock()
        self.conds: dict = {}                  # one per (source, destination, tag): no herd
        self.barrier = threading.Barrier(size, timeout=TIMEOUT_S)
        self.slots: list = [None] * size
        self.failed = False

    def cond(self, key: tuple) -> threading.Condition:
        """Under ``self.lock``: the condition of one message queue."""
        c = self.conds.get(key)
        if c is None:
            c = self.conds[key] = threading.Condition(self.lock)
        return c

    def fail(self) -> None:
        with self.lock:
            self.failed = True
            for c in self.conds.values():
                c.notify_all()
        self.barrier.abort()


class _Broken(RuntimeError):
    """A wait that ended because another virtual rank failed."""


class _Done:
    def Wait(self) -> None:
        pass

    def Test(self) -> bool:
        return True


class _Pending:
    def __init__(self, world: _World, key: tuple, buf) -> None:
        self.world, self.key, self.buf = world, key, buf

    def Wait(self) -> None:
        w = self.world
        with w.lock:
            if not w.cond(self.key).wait_for(lambda: w.queues[self.key] or w.failed,
                                             TIMEOUT_S) or w.failed:
                raise _Broken("a message never came (another virtual rank failed)")
            np.copyto(self.buf, w.queues[self.key].popleft())


def _array(buf):
    return buf[0] if isinstance(buf, list) else buf


class VirtualComm:
    """The subset of ``MPI.Comm`` the layer-parallel code calls, for one virtual rank."""

    def __init__(self, world: _World, rank: int) -> None:
        self.world, self.rank = world, rank

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.world.size

    # -- point to point ------------------------------------------------------------------
    def Isend(self, buf, dest: int, tag: int) -> _Done:
        w, key = self.world, (self.rank, dest, tag)
        with w.lock:
            w.queues[key].append(np.array(buf, copy=True))
            w.cond(key).notify()
        return _Done()

    def Irecv(self, buf, source: int, tag: int) -> _Pending:
        return _Pending(self.world, (source, self.rank, tag), buf)

    # -- collectives: every rank deposits, all read ----------------------------------------
    def _all(self, value) -> list:
        w = self.world
        w.slots[self.rank] = value
        w.barrier.wait()
        out = list(w.slots)
        w.barrier.wait()
        return out

    def Barrier(self) -> None:
        self._all(None)

    def allgather(self, obj) -> list:
        return self._all(obj)

    def bcast(self, obj, root: int = 0):
        return self._all(obj)[root]

    def allreduce(self, obj, op=MPI.SUM):
        values = self._all(obj)
        return max(values) if op == MPI.MAX else min(values) if op == MPI.MIN else sum(values)

    def gather(self, obj, root: int = 0):
        out = self._all(obj)
        return out if self.rank == root else None

    def alltoall(self, objs: list) -> list:
        return [row[self.rank] for row in self._all(objs)]

    def Allgather(self, sendbuf, recvbuf) -> None:
        parts = self._all(np.array(sendbuf, copy=True))
        np.copyto(recvbuf, np.concatenate([p.ravel() for p in parts]).reshape(recvbuf.shape))

    def Bcast(self, buf, root: int = 0) -> None:
        b = _array(buf)
        parts = self._all(np.array(b, copy=True) if self.rank == root else None)
        np.copyto(b, parts[root])

    def _reduce(self, sendbuf, recvbuf) -> np.ndarray:
        mine = np.array(_array(recvbuf) if sendbuf is MPI.IN_PLACE else _array(sendbuf),
                        copy=True)
        return np.sum(self._all(mine), axis=0)

    def Reduce(self, sendbuf, recvbuf, op=MPI.SUM, root: int = 0) -> None:
        total = self._reduce(sendbuf, recvbuf)
        if self.rank == root:
            np.copyto(_array(recvbuf), total)

    def Allreduce(self, sendbuf, recvbuf, op=MPI.SUM) -> None:
        np.copyto(_array(recvbuf), self._reduce(sendbuf, recvbuf))

    def Gatherv(self, sendbuf, recvbuf, root: int = 0) -> None:
        parts = self._all(np.array(sendbuf, copy=True))
        if self.rank == root:
            np.copyto(recvbuf[0], np.concatenate([p.ravel() for p in parts]))


def on_virtual_ranks(size: int, work, run) -> list:
    """``work(run_r)`` on ``size`` virtual ranks (threads), each with its own ``Run`` whose
    layer group is a :class:`VirtualComm`; the list of their results, rank order."""
    world = _World(size)
    results: list = [None] * size
    errors: list = []

    def body(r: int) -> None:
        try:
            msg = Messenger(VirtualComm(world, r))
            results[r] = work(replace(run, msg=msg))
        except BaseException as exc:           # noqa: BLE001 - reported below, once
            errors.append((r, exc))
            world.fail()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(size)]
    intra = torch.get_num_threads()
    torch.set_num_threads(1)                  # the threads take turns: no pools inside them
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(intra)
    if errors:
        # the failure itself, not the waits it broke on the other ranks
        r, exc = min(errors, key=lambda e: isinstance(e[1], (threading.BrokenBarrierError,
                                                             _Broken)))
        raise RuntimeError(f"virtual rank {r} of {size} failed: {exc!r}") from exc
    return results


def record(run, size: int, gradient) -> list[list[tuple]]:
    """Every virtual rank's schedule of one ``gradient(run_r)`` call (after one untimed
    call that warms up what a repeated gradient reuses)."""
    def work(r_run):
        g = gradient(r_run)
        g()
        with Trace(count=True) as tr:
            r_run.msg.trace = tr
            g()
            r_run.msg.trace = None
        return tr.events
    return on_virtual_ranks(size, work, run)

