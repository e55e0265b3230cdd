"""``serial``: the one-rank reference, plain PyTorch autograd on the serial network."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mgrit_nn.methods.base import Batch, Method, StepInfo, correct
from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.setup_run import Run


class SerialMethod(Method):
    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.model = SerialResNet(run.cfg.model, run.shapes, run.dtype, run.device)
        self.reg = run.cfg.reg

    def parameters(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def dot(self, a: float) -> float:
        return a                                          # nothing to reduce on one rank

    def step(self, batch: Batch) -> StepInfo:
        self.model.zero_grad(set_to_none=False)
        logits = self.model(batch.x)
        loss = (F.cross_entropy(logits, batch.y) + self.model.regularization(self.reg)) \
            * batch.scale
        loss.backward()
        return StepInfo(loss.item(), correct(logits, batch.y))

    @torch.no_grad()
    def loss(self, batch: Batch) -> float:
        return ((F.cross_entropy(self.model(batch.x), batch.y)
                 + self.model.regularization(self.reg)) * batch.scale).item()

    @torch.no_grad()
    def evaluate(self, x, y) -> tuple[float, int]:
        """(summed cross-entropy, correct) of the exact forward pass."""
        logits = self.model(x)
        return F.cross_entropy(logits, y, reduction="sum").item(), correct(logits, y)

    # -- global flat vectors (checkpoints): on one rank the share is everything -----------------
    def local_flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.detach().flatten() for t in tensors])

    def gather_flat(self, local: torch.Tensor) -> torch.Tensor:
        return local.detach().cpu()

    def share(self) -> tuple[int, int]:
        return 0, sum(p.numel() for p in self.parameters())

    def local_from_share(self, flat: torch.Tensor) -> list[torch.Tensor]:
        params = self.parameters()
        parts = torch.split(flat, [p.numel() for p in params])
        return [t.view_as(p).to(p) for t, p in zip(parts, params, strict=True)]
