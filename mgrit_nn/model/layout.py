"""The global flat parameter order, independent of the rank count (checkpoints, gathers)."""

from __future__ import annotations

import math

import numpy as np
import torch

from mgrit_nn.model.init import Shapes


class ParamLayout:
    """The global flat parameter order: opening (W, b), layers j = 0..N-1 (K_j, b_j), classifier."""

    def __init__(self, s: Shapes, N: int) -> None:
        self.s, self.N = s, N
        self.open = [math.prod(t) for t in s.opening]
        self.layer = [math.prod(t) for t in s.layer]
        self.cls = [math.prod(t) for t in s.classifier]
        self.size = sum(self.open) + N * sum(self.layer) + sum(self.cls)

    def offset(self, first: bool, jlo: int) -> int:
        """Where a rank's share starts: the opening if it is first, else its first layer."""
        return 0 if first else sum(self.open) + jlo * sum(self.layer)

    def keys(self) -> list[str]:
        """The parameter names in the global order (``opening/weight``, ``layers/00000/bias``)."""
        keys = ["opening/weight", "opening/bias"]
        for j in range(self.N):
            keys += [f"layers/{j:05d}/weight", f"layers/{j:05d}/bias"]
        return keys + ["classifier/weight", "classifier/bias"]

    def named(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(flat, self.open + self.layer * self.N + self.cls)
        shapes = [self.s.opening[0], self.s.opening[1]] + [self.s.layer[0], self.s.layer[1]] \
            * self.N + [self.s.classifier[0], self.s.classifier[1]]
        return {k: p.view(s) for k, p, s in zip(self.keys(), parts, shapes, strict=True)}

    def flat(self, named: dict[str, np.ndarray | torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.as_tensor(np.asarray(named[k])).flatten() for k in self.keys()])
