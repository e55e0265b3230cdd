"""``mgrit`` (exact: forward and adjoint to tolerance) and ``oneshot`` (a fixed few
warm-started iterations of each per step: the simultaneous, inexact-gradient method).

Warm start (oneshot): every training sample keeps its forward and adjoint iterates
(this rank's points only) from the last step that used it, so mini-batches work as
well as the full batch. Memory per rank: 2 x (local points) x n_train x state size.
"""

from __future__ import annotations

import torch

from mgrit_nn.methods.base import StepInfo, correct
from mgrit_nn.setup_run import Run


class WarmStore:
    """Per-sample iterates of one solver, filled as samples are used."""

    def __init__(self, n_samples: int) -> None:
        self.n = n_samples
        self.store: torch.Tensor | None = None
        self.seen = torch.zeros(n_samples, dtype=torch.bool)

    def get(self, idx: torch.Tensor) -> torch.Tensor | None:
        if self.store is None or not bool(self.seen[idx].any()):
            return None
        return self.store[:, idx.to(self.store.device)]

    def put(self, idx: torch.Tensor, u: torch.Tensor) -> None:
        if self.store is None:
            self.store = u.new_zeros((u.shape[0], self.n) + tuple(u.shape[2:]))
        self.store[:, idx.to(u.device)] = u
        self.seen[idx] = True


class LayerParallelMethod:
    def __init__(self, run: Run, exact: bool) -> None:
        self.run, self.net = run, run.network()
        t = run.cfg.train
        self.fwd_kw = {} if exact else {"max_iter": t.fwd_iters}
        self.adj_kw = {} if exact else {"max_iter": t.adj_iters}
        warm = not exact and t.warm_start
        n = len(run.data.x_train)
        self.fwd_store = WarmStore(n) if warm else None
        self.adj_store = WarmStore(n) if warm else None

    def parameters(self) -> list[torch.Tensor]:
        return self.net.local_parameters()

    def dot(self, a: float) -> float:
        return self.net.msg.allreduce_sum(a)       # each layer lives on one rank of the group

    def gradient(self, x, y, idx, scale: float = 1.0) -> StepInfo:
        net, fs, ads = self.net, self.fwd_store, self.adj_store
        fwd = net.solve_forward(x, warm=fs.get(idx) if fs else None, **self.fwd_kw)
        if fs:
            fs.put(idx, net.solver.u)
        loss, logits = net.loss(y)
        grads = net.backprop(x, y, scale, warm=ads.get(idx) if ads else None, **self.adj_kw)
        if ads:
            ads.put(idx, net.adjoint.u)
        for p, g in zip(self.parameters(), grads, strict=True):
            p.grad = g.detach().clone()
        adj = net.adj_result
        return StepInfo(loss * scale, correct(logits, y), fwd.iters, fwd.residuals[-1],
                        adj.iters, adj.residuals[-1], fwd.residuals, adj.residuals)

    def loss(self, x, y, scale: float = 1.0) -> float:
        """Loss of the exact forward pass (line search)."""
        self.net.propagate(x)
        return self.net.loss(y)[0] * scale

    def evaluate(self, x, y) -> tuple[float, int]:
        """(summed cross-entropy, correct) of the exact forward pass; counts on the last rank."""
        self.net.propagate(x)
        if not self.net.last:
            return 0.0, 0
        with torch.no_grad():
            logits = self.net.classifier(self.net.final_state())
            ce = torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        return ce, correct(logits, y)
