"""The one interface between the MGRIT core and whatever it integrates.

The core knows levels, slots and messages; a propagator knows what a step is
(forward Euler ODE-ResNet step, its adjoint, a Verlet step ...). Everything
the solver needs from an application is here, plus the two pieces of memory
plumbing both sides share: :class:`Index` (slot sets that are views when they
can be) and :class:`Workspace` (scratch that is allocated once, not per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch

from mgrit_nn.mgrit.hierarchy import Level


@dataclass(frozen=True, eq=False)
class Index:
    """Slots of a level's storage (rows of its leading dimension).

    Slot sets of whole intervals are arithmetic progressions (every ``cfactor``-th
    slot, or a range); for those ``get`` returns a strided view and ``put``/``add_``
    write in place, so no gather or scatter copies. Others use the index tensor.
    """

    t: torch.Tensor                 # int64 on the solver's device
    sl: slice | None = None         # the same rows as a slice, when they are one

    @classmethod
    def of(cls, slots: list[int], device: torch.device | str) -> Index:
        t = torch.tensor(slots, dtype=torch.long, device=device)
        if not slots:
            return cls(t, slice(0, 0))
        step = slots[1] - slots[0] if len(slots) > 1 else 1
        regular = step > 0 and all(b - a == step for a, b in zip(slots, slots[1:], strict=False))
        return cls(t, slice(slots[0], slots[-1] + 1, step) if regular else None)

    def shift(self, d: int) -> Index:
        sl = self.sl
        if sl is not None and sl.start + d >= 0:
            return Index(self.t + d, slice(sl.start + d, sl.stop + d, sl.step))
        return Index(self.t + d, None)

    def __len__(self) -> int:
        return self.t.numel()

    def get(self, x: torch.Tensor) -> torch.Tensor:
        """The selected rows: a view when regular, else a gathered copy."""
        return x[self.sl] if self.sl is not None else x.index_select(0, self.t)

    def put(self, x: torch.Tensor, v: torch.Tensor) -> None:
        """``x[slots] = v``."""
        if self.sl is not None:
            x[self.sl].copy_(v)
        else:
            x.index_copy_(0, self.t, v)

    def add_(self, x: torch.Tensor, v: torch.Tensor) -> None:
        """``x[slots] += v``."""
        if self.sl is not None:
            x[self.sl].add_(v)
        else:
            x.index_add_(0, self.t, v)


def same_objects(a, b) -> bool:
    """Whether two sequences hold the same objects (``is``) in the same order: a holder of
    views of some tensors tells by it whether they were replaced."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class Workspace:
    """Named scratch memory, each name kept at the largest size asked for.

    ``get(name, n, like)`` returns ``n`` rows shaped like ``like``'s rows (contiguous, the
    start of the name's memory, whatever row shape it was asked for before); after the
    first iteration of a solve nothing is allocated.
    The caller owns the rows until it asks for the same name again. Computations that
    never run at the same time may share one workspace (a network's forward and adjoint
    solvers and their steps do): each name's memory is then held once for all of them.
    """

    def __init__(self) -> None:
        self._bufs: dict = {}
        self._views: dict = {}      # (name, n, row, dtype, device) -> the rows, while current
        self.generation = 0         # counts (re)allocations: a recording of rows is then stale

    def get(self, name, n: int, like: torch.Tensor) -> torch.Tensor:
        return self.rows(name, n, like.shape[1:], like.dtype, like.device)

    def rows(self, name, n: int, row: tuple[int, ...], dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
        """``n`` rows of shape ``row`` from the memory of ``name`` (the same view object for
        the same request while the memory stays: no slicing per step)."""
        key = (name, n, tuple(row), dtype, device)
        view = self._views.get(key)
        if view is not None:
            return view
        row = key[2]
        need = n * math.prod(row)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < need or buf.dtype != dtype or buf.device != device:
            buf = self._bufs[name] = torch.empty((n,) + row, dtype=dtype, device=device)
            self.generation += 1
            self._views = {k: v for k, v in self._views.items() if k[0] != name}
        if tuple(buf.shape[1:]) == row:     # rows of a buffer of that shape (what compiled
            view = buf[:n]                  # code expects of an output)
        else:
            view = buf.view(-1)[:need].view((n,) + row)
        self._views[key] = view
        return view


@dataclass(frozen=True, eq=False)
class Selection:
    """A set of local slots on one level, stepped together as one batch.

    ``key`` is stable for the lifetime of a hierarchy, so a propagator may
    cache per-selection data (e.g. gathered weights) until ``prepare``.
    """

    slots: Index
    key: tuple
    prev: Index = field(init=False)   # slots - 1: the predecessors, made once

    def __post_init__(self) -> None:
        object.__setattr__(self, "prev", self.slots.shift(-1))


class Propagator(Protocol):
    def prepare(self, levels: list[Level]) -> None:
        """(Re)build per-level step data for these levels; drop cached selections."""

    def step(self, level: int, sel: Selection, u: torch.Tensor, out: torch.Tensor) -> None:
        """``Phi^(level)`` into each selected point from the stacked states ``u``.

        ``u[k]`` is the state at the point before ``sel.slots[k]``; the stacked
        states at the selected points (no FAS right-hand side) are written into
        ``out`` (same shape as ``u``, possibly a strided view, never overlapping
        ``u``).
        """
        ...

    def capture_key(self) -> tuple:
        """Changes whenever the memory ``step`` reads (weights, linearization) is replaced
        rather than overwritten: a recorded iteration (``runtime.graphs``) is then stale.
        Needed only with ``runtime.graphs``."""
        ...
