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

    def _entries(self) -> list[tuple[str, int, tuple]]:
        """(name, size, shape) in the global order."""
        sizes = self.open + self.layer * self.N + self.cls
        shapes = [self.s.opening[0], self.s.opening[1]] + [self.s.layer[0], self.s.layer[1]] \
            * self.N + [self.s.classifier[0], self.s.classifier[1]]
        return list(zip(self.keys(), sizes, shapes, strict=True))

    def named(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.named_share(flat, 0)

    def _within(self, start: int, n: int):
        """(name, offset, size, shape) of the tensors in ``[start, start + n)``."""
        at = 0
        for key, size, shape in self._entries():
            if start <= at and at + size <= start + n:
                yield key, at, size, shape
            at += size

    def named_share(self, share: torch.Tensor, start: int) -> dict[str, torch.Tensor]:
        """The named tensors of a rank's share of the flat vector, which starts at ``start``
        (a share holds whole tensors: see :meth:`offset`)."""
        return {key: share[at - start:at - start + size].view(shape)
                for key, at, size, shape in self._within(start, share.numel())}

    def keys_in(self, start: int, n: int) -> list[str]:
        """The names of the tensors in ``[start, start + n)`` of the flat vector."""
        return [key for key, *_ in self._within(start, n)]

    def flat(self, named: dict[str, np.ndarray | torch.Tensor],
             keys: list[str] | None = None) -> torch.Tensor:
        """The flat vector (or, of ``keys``, the share) of named tensors."""
        return torch.cat([torch.as_tensor(np.asarray(named[k])).flatten()
                          for k in (self.keys() if keys is None else keys)])
