"""``clipped``: plain gradient descent on the exact MGRIT gradient, clipped in norm.

The worked example of docs/architecture.md ("add a training method"): one module and one
registry entry. Per step: the exact forward and adjoint MGRIT solves of ``mgrit``, then
every gradient is scaled by ``min(1, clip.max_norm / ||g||)`` with ``||g||`` the norm of
the whole network's gradient (one reduction over the layer-parallel ranks), so a step is
never longer than ``train.lr * clip.max_norm``.
"""

from __future__ import annotations

import torch

from mgrit_nn.methods.base import Batch, StepInfo
from mgrit_nn.methods.layer_parallel import LayerParallelMethod


class ClippedMethod(LayerParallelMethod):
    def __init__(self, run) -> None:
        super().__init__(run, exact=True)
        self.max_norm = run.cfg.clip.max_norm

    def step(self, batch: Batch) -> StepInfo:
        info = super().step(batch)                     # exact MGRIT gradient in .grad
        params = self.parameters()
        norm = self.dot(sum(float((p.grad ** 2).sum()) for p in params)) ** 0.5
        factor = min(1.0, self.max_norm / norm) if norm > 0 else 1.0
        if factor < 1.0:
            with torch.no_grad():
                for p in params:
                    p.grad.mul_(factor)
        info.extra["grad_norm_unclipped"] = norm
        return info
