"""A rank's schedule, recorded as it runs.

A :class:`Trace` attached to a :class:`~mgrit_nn.comm.Messenger` (``msg.trace``) cuts the
rank's work into events at every message: ``("c", kernels, elements, seconds)`` for the
compute between two messages (the tensor operations that ran a kernel and the elements
they wrote, counted when ``count`` is on, and the measured wall time, waits excluded),
``("s", peer, tag, bytes)`` when a message is posted, ``("r", peer, tag, bytes)`` where a
received message is first needed (its wait), ``("a", bytes)`` for a reduction or broadcast
over the group. The schedule is the solver's own: nothing here re-derives it.
"""

from __future__ import annotations

import math
import time

from torch.utils._python_dispatch import TorchDispatchMode

from mgrit_nn.opcount import _VIEWS


class Trace(TorchDispatchMode):
    """Use as ``with Trace(count=True) as tr: msg.trace = tr; ...``; ``tr.events`` after."""

    def __init__(self, count: bool = True) -> None:
        super().__init__()
        self.count = count
        self.events: list[tuple] = []
        self.kernels = self.elements = 0
        self.t0 = time.perf_counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in _VIEWS:
            self.kernels += 1
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            shape = getattr(first, "shape", None)
            self.elements += math.prod(shape) if shape is not None else 0
        return out

    def __enter__(self):
        self.t0 = time.perf_counter()
        return super().__enter__() if self.count else self

    def __exit__(self, *exc):
        self.cut()
        return super().__exit__(*exc) if self.count else None

    def cut(self) -> None:
        """End the current compute segment."""
        now = time.perf_counter()
        self.events.append(("c", self.kernels, self.elements, now - self.t0))
        self.kernels = self.elements = 0
        self.t0 = now

    def send(self, peer: int, tag: int, nbytes: int) -> None:
        self.cut()
        self.events.append(("s", peer, int(tag), nbytes))
        self.t0 = time.perf_counter()

    def recv(self, peer: int, tag: int, nbytes: int) -> None:
        """Before the wait: the wait itself is not compute."""
        self.cut()
        self.events.append(("r", peer, int(tag), nbytes))

    def resume(self) -> None:
        """After a wait or a reduction: compute starts again."""
        self.t0 = time.perf_counter()

    def reduce(self, nbytes: int) -> None:
        self.cut()
        self.events.append(("a", nbytes))


def totals(events: list[tuple]) -> dict:
    """Kernels, elements and compute seconds of a schedule, and its message counts."""
    c = [e for e in events if e[0] == "c"]
    return {"kernels": sum(e[1] for e in c), "elements": sum(e[2] for e in c),
            "compute_s": sum(e[3] for e in c),
            "sends": sum(e[0] == "s" for e in events),
            "reductions": sum(e[0] == "a" for e in events)}
