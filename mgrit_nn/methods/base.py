"""What every training method provides to the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepInfo:
    """One gradient evaluation on this replica's share of a batch."""

    loss: float                 # this replica's loss, scaled by its share of the batch
    correct: int                # correctly classified samples of this share
    fwd_iters: int = 0
    fwd_residual: float = 0.0
    adj_iters: int = 0
    adj_residual: float = 0.0
    fwd_residuals: list[float] = field(default_factory=list)
    adj_residuals: list[float] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)   # method-specific history columns


def correct(logits: torch.Tensor | None, y: torch.Tensor) -> int:
    return 0 if logits is None else int((logits.argmax(1) == y).sum())
