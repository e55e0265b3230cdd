"""The one interface between the MGRIT core and whatever it integrates.

The core knows levels, slots and messages; a propagator knows what a step is
(forward Euler ODE-ResNet step, its adjoint, a Verlet step ...). Everything
the solver needs from an application is here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from mgrit_nn.mgrit.hierarchy import Level


@dataclass(frozen=True, eq=False)
class Selection:
    """A set of local slots on one level, stepped together as one batch.

    ``key`` is stable for the lifetime of a hierarchy, so a propagator may
    cache per-selection data (e.g. gathered weights) until ``prepare``.
    """

    slots: torch.Tensor   # int64, on the solver's device
    key: tuple
    prev: torch.Tensor = field(init=False)   # slots - 1: the predecessors, made once

    def __post_init__(self) -> None:
        object.__setattr__(self, "prev", self.slots - 1)


class Propagator(Protocol):
    def prepare(self, levels: list[Level]) -> None:
        """(Re)build per-level step data for these levels; drop cached selections."""

    def step(self, level: int, sel: Selection, u: torch.Tensor) -> torch.Tensor:
        """``Phi^(level)`` into each selected point from the stacked states ``u``.

        ``u[k]`` is the state at the point before ``sel.slots[k]``; returns the
        stacked states at the selected points (no FAS right-hand side).
        """
        ...
