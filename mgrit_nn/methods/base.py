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


class PartitionedMethod:
    """What every method on the layer partition shares (design §3): this rank's parameters
    of a :class:`~mgrit_nn.model.parallel.ParallelResNet`, reductions over the layer group,
    exact evaluation by one distributed forward sweep, and the global flat layout of
    checkpoints. Methods add ``gradient`` and, for extra state, ``warm_arrays``/``load_warm``.
    """

    def __init__(self, run) -> None:
        from mgrit_nn.io.checkpoint import ParamLayout

        self.run, self.net = run, run.network()
        self.run_layout = ParamLayout(run.shapes, run.cfg.model.layers)

    def parameters(self) -> list[torch.Tensor]:
        return self.net.local_parameters()

    def dot(self, a: float) -> float:
        return self.net.msg.allreduce_sum(a)       # each layer lives on one rank of the group

    def evaluate(self, x, y) -> tuple[float, int]:
        """(summed cross-entropy, correct) of the exact forward pass; counts on the last rank."""
        self.net.propagate(x)
        if not self.net.last:
            return 0.0, 0
        with torch.no_grad():
            logits = self.net.classifier(self.net.final_state())
            ce = torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        return ce, correct(logits, y)

    # -- global flat vectors (checkpoints) ---------------------------------------------------
    def local_flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return self.net.flat([t.detach() for t in tensors])

    def gather_flat(self, local: torch.Tensor) -> torch.Tensor | None:
        return self.net.gather_flat(local)

    def local_from_global(self, flat: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        start = self.run_layout.offset(net.first, net.jlo)
        n = self.local_flat(self.parameters()).numel()
        share = flat[start:start + n].to(device=net.device, dtype=net.dtype)
        return net.unflat(share)

    def warm_arrays(self) -> dict:
        return {}

    def load_warm(self, f) -> None:
        pass
