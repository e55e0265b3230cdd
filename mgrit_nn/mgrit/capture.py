"""Whole-iteration capture (``runtime.graphs``): a computation recorded once, replayed.

An MGRIT iteration on one rank is a fixed sequence of tensor operations on memory that
stays in place (the levels' storage, the workspace, the propagator's step data): recorded
once, it can be run again by replaying the record, with none of the per-operation cost of
Python and PyTorch's dispatch. Two backends keep the same contract:

- ``cuda``: a ``torch.cuda.CUDAGraph`` per computation; a replay is one launch.
- ``emulate``: the record is the list of ATen operations the computation dispatched, and a
  replay calls them again on the same tensors (and copies each result that was new memory
  at capture into that memory). It runs on any device and is slower than eager: it checks
  on a CPU that a computation keeps the contract, so that a CUDA graph of it replays the
  same arithmetic; the tests use it.

The contract of a captured computation ``fn()``:

- It reads and writes only tensors that stay where they are between replays. What it
  allocates itself is the graph's own memory, rewritten by every replay.
- No value goes to the host (``.item()``, ``.tolist()``, ``bool(tensor)``) and no host
  data comes in (``torch.tensor(list)``), and there are no messages: a CUDA graph replays
  only device work. Both backends refuse such an operation at capture (:class:`CaptureError`).
- Python side effects happen once, at capture. What the caller needs of them it takes
  from ``fn``'s return value: the same objects after every replay, holding its results.

Capture does not do the computation's work: state is as before it (the emulation undoes
the writes it made while recording); call :meth:`replay` for that.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten

log = logging.getLogger("mgrit_nn")

KINDS = ("eager", "cuda", "emulate")

# operations that move a value between host and device, or wait for one: not capturable
_HOST = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "lift_fresh",
         "lift_fresh_copy", "masked_select", "unique", "_unique2", "allclose"}


class CaptureError(RuntimeError):
    """A computation broke the capture contract (module docstring)."""


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _written(func, args, kwargs) -> list[torch.Tensor]:
    """The tensor arguments an operation writes (its schema's mutable arguments)."""
    out = []
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            v = args[i] if i < len(args) else kwargs.get(a.name)
            out += _tensors(v)
    return out


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _refused(name: str):
    def refuse(*args, **kwargs):
        raise CaptureError(f"Tensor.{name} moves data between host and device inside a "
                           "captured computation (a graph replays device work only)")
    return refuse


@contextmanager
def _no_host_reads():
    """``Tensor.tolist`` and ``Tensor.numpy`` read CPU memory without dispatching an
    operation: refused while capturing, as on a GPU, where they copy to the host (in the
    whole process: no other thread may read tensors on the host during a capture)."""
    kept = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}
    try:
        for name in kept:
            setattr(torch.Tensor, name, _refused(name))
        yield
    finally:
        for name, fn in kept.items():
            setattr(torch.Tensor, name, fn)


class _Guard(TorchDispatchMode):
    """Refuses host transfers while a computation is captured; with ``record``, also keeps
    every operation (the emulation's record) and undoes the writes to memory that existed
    before the capture when it ends (:meth:`undo`)."""

    def __init__(self, record: bool) -> None:
        super().__init__()
        self.record = record
        self.ops: list = []
        self.saved: dict[int, tuple[torch.UntypedStorage, torch.UntypedStorage]] = {}
        self.made: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        moves = name in ("_to_copy", "copy_") and len(
            {t.device.type for t in _tensors((args, kwargs))} |
            ({torch.device(kwargs["device"]).type} if kwargs.get("device") else set())) > 1
        if name in _HOST or moves:
            raise CaptureError(
                f"aten.{name} moves data between host and device inside a captured "
                "computation (a graph replays device work only)")
        if not self.record:
            return func(*args, **kwargs)
        for t in _written(func, args, kwargs):
            key = _storage(t)
            if t.untyped_storage().nbytes() and key not in self.made and key not in self.saved:
                s = t.untyped_storage()
                self.saved[key] = (s, s.clone())
        out = func(*args, **kwargs)
        inputs = {_storage(t) for t in _tensors((args, kwargs))}
        fresh = []
        for t in _tensors(out):
            key = _storage(t)
            if key not in inputs and t.untyped_storage().nbytes():
                self.made.add(key)
                fresh.append(t)
        self.ops.append((func, args, kwargs, out, fresh))
        return out

    @torch.no_grad()
    def undo(self) -> None:
        for s, copy in self.saved.values():
            s.copy_(copy)
        self.saved = {}


class EmulatedGraph:
    """The ``emulate`` backend (module docstring)."""

    def __init__(self) -> None:
        self.ops: list = []

    def capture(self, fn) -> Any:
        guard = _Guard(record=True)
        try:
            with guard, _no_host_reads():
                out = fn()
        finally:
            guard.undo()
        self.ops = guard.ops
        return out

    @torch.no_grad()                 # the record is below autograd (a backward's too)
    def replay(self) -> None:
        """Like a CUDA graph's replay, invisible to dispatch modes around it (an operation
        count sees what the host issues besides the replay)."""
        with _disable_current_modes():
            for func, args, kwargs, out, fresh in self.ops:
                got = func(*args, **kwargs)
                if fresh:
                    new = {id(t): r for t, r in zip(_tensors(out), _tensors(got), strict=True)}
                    for t in fresh:
                        t.copy_(new[id(t)])


class CudaGraph:
    """The ``cuda`` backend: ``torch.cuda.CUDAGraph``, with the same host-transfer check."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn) -> Any:
        with torch.cuda.graph(self.graph), _Guard(record=False), _no_host_reads():
            return fn()

    def replay(self) -> None:
        self.graph.replay()


def new_graph(kind: str):
    """An empty graph of backend ``kind`` (``cuda`` or ``emulate``)."""
    if kind == "cuda":
        return CudaGraph()
    if kind == "emulate":
        return EmulatedGraph()
    raise ValueError(f"no graph backend {kind!r} (one of {KINDS[1:]})")


def warm_up(kind: str, fn) -> Any:
    """Runs ``fn()`` eagerly before its capture: on a side stream for ``cuda`` (lazy
    initialization of libraries, as PyTorch's CUDA-graph notes ask), plainly otherwise.
    Only for computations whose memory lives no longer than the call or is dropped before
    the capture (a block allocated on a side stream may be handed out on it again)."""
    if kind != "cuda":
        return fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


# -- the MGRIT solver's use: one recording per kind of iteration -------------------------

@dataclass
class Recordings:
    """A solver's recorded iterations: per kind, (graph, its outputs, its step count)."""

    kinds: dict = field(default_factory=dict)
    seen: set = field(default_factory=set)       # kinds run eagerly once under ``key``
    key: tuple | None = None                     # the memory the recordings read


def iteration(solver, cycle, skip: bool) -> torch.Tensor | None:
    """``solver.iterate`` (a cycle, then the residual's sums), eagerly or (``solver.graphs``)
    from a recording of its kind.

    A kind is the code path the iteration takes (``skip``; whether and where the last
    residual is kept). The first iteration of a kind runs eagerly (it allocates the scratch
    and builds the plans a recording must not), the second is recorded, every later one
    replayed, until the memory the recordings read is replaced (``solver.memory_key()``);
    then they are dropped and recorded anew. A failed recording is reported once and the
    solver runs eagerly from then on."""
    if solver.graphs is None:
        return solver.iterate(cycle, skip)
    rec, r0 = solver.recordings, solver.r0
    kind = (skip, None if r0 is None else (r0.data_ptr(), r0.shape))
    key = solver.memory_key()
    if key != rec.key:
        rec.kinds, rec.seen, rec.key = {}, set(), key
    got = rec.kinds.get(kind)
    if got is None:
        if kind not in rec.seen:        # on the current stream: what it allocates is used
            rec.seen.add(kind)          # there for good (a side stream's blocks could be
            return solver.iterate(cycle, skip)      # handed out again under it)
        got = _record(solver, cycle, skip)
        if got is None:
            return solver.iterate(cycle, skip)
        rec.kinds[kind] = got
    graph, (r0, sums), steps = got
    with solver.stats.phase("replay"):
        graph.replay()
    solver.stats.steps += steps
    solver.stats.replays += 1
    solver.r0 = r0
    return sums


def _record(solver, cycle, skip: bool):
    """(graph, its outputs (the kept residual, the sums), its step count), or None when the
    recording failed (then the solver is eager from here on)."""
    graph, steps, r0 = new_graph(solver.graphs), solver.stats.steps, solver.r0
    try:
        with solver.stats.phase("record"):
            out = graph.capture(lambda: (solver.iterate(cycle, skip), solver.r0))
    except (CaptureError, RuntimeError) as exc:
        log.warning("%s: runtime.graphs %s: recording an iteration failed (%s); this "
                    "solver runs eagerly from here on", solver.name, solver.graphs, exc)
        solver.graphs, solver.recordings = None, Recordings()
        solver.stats.steps, solver.r0 = steps, r0     # as before the recording (its memory too)
        return None
    sums, r0 = out
    taken, solver.stats.steps = solver.stats.steps - steps, steps
    return graph, (r0, sums), taken

