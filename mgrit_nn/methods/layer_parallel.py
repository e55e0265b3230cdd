"""``mgrit`` (exact: forward and adjoint to tolerance) and ``oneshot`` (a fixed few
warm-started iterations of each per step: the simultaneous, inexact-gradient method).

Warm start (oneshot): every training sample keeps its forward and adjoint iterates
(this rank's points only) from the last step that used it, so mini-batches work as
well as the full batch. Memory per rank: 2 x (local points) x n_train x state size.
"""

from __future__ import annotations

import numpy as np
import torch
from mpi4py import MPI

from mgrit_nn.methods.base import Batch, PartitionedMethod, StepInfo, correct
from mgrit_nn.runtime import CheckpointError
from mgrit_nn.setup_run import Run


class WarmStore:
    """Per-sample iterates of one solver (this rank's points), filled as samples are used.

    ``last_used[i]`` counts the puts up to the one that stored sample i (-1: never), so
    replicas, which put once per step each, can tell whose copy of a sample is newest.
    """

    def __init__(self, n_samples: int) -> None:
        self.n = n_samples
        self.store: torch.Tensor | None = None
        self.last_used = torch.full((n_samples,), -1, dtype=torch.int64)
        self.clock = 0

    def _everything(self, idx: torch.Tensor) -> bool:
        """Full batch in natural order: use the store itself, no gather/scatter copies."""
        return len(idx) == self.n and bool((idx == torch.arange(self.n)).all())

    def get(self, idx: torch.Tensor) -> torch.Tensor | None:
        if self.store is None or not bool((self.last_used[idx] >= 0).any()):
            return None
        if self._everything(idx):
            return self.store
        return self.store[:, idx.to(self.store.device)]

    def put(self, idx: torch.Tensor, u: torch.Tensor) -> None:
        if self.store is None:
            self.store = u.new_zeros((u.shape[0], self.n) + tuple(u.shape[2:]))
        if self._everything(idx):
            self.store.copy_(u)
        else:
            self.store[:, idx.to(u.device)] = u
        self.last_used[idx] = self.clock
        self.clock += 1


class LayerParallelMethod(PartitionedMethod):
    def __init__(self, run: Run, exact: bool | None = None, fixed_iters: bool = False) -> None:
        """``fixed_iters`` (one-shot): always ``train.fwd_iters``/``adj_iters`` iterations,
        never stopping early at the tolerance (the bench's repeated identical gradients)."""
        super().__init__(run)
        t = run.cfg.train
        exact = t.method == "mgrit" if exact is None else exact
        never = {"tol": 0.0} if fixed_iters else {}
        self.fwd_kw = {} if exact else {"max_iter": t.fwd_iters, **never}
        self.adj_kw = {} if exact else {"max_iter": t.adj_iters, **never}
        warm = not exact and t.warm_start
        n = len(run.data.x_train)
        self.fwd_store = WarmStore(n) if warm else None
        self.adj_store = WarmStore(n) if warm else None

    def step(self, batch: Batch) -> StepInfo:
        """Forward MGRIT (warm-started), loss, adjoint MGRIT (warm-started), layer gradients."""
        x, y, idx, scale = batch.x, batch.y, batch.idx, batch.scale
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

    def loss(self, batch: Batch) -> float:
        """Loss of the exact forward pass (line search)."""
        self.net.propagate(batch.x)
        return self.net.loss(batch.y)[0] * batch.scale

    def state_dict(self) -> dict:
        """``warm``: global warm-start iterates by forward point index (on rank 0)."""
        fs, ads = self.fwd_store, self.adj_store
        if fs is None or fs.store is None:
            return {}
        data = self.run.data_msg
        last = fs.last_used.numpy().copy()
        data.comm.Allreduce(MPI.IN_PLACE, last, op=MPI.MAX)
        out = {"last_used": last, "clock": np.array(fs.clock)}
        for name, store, flip in (("forward", fs, False), ("adjoint", ads, True)):
            mine = (torch.from_numpy(last) == store.last_used) & (store.last_used >= 0)
            local = store.store * mine.view((1, -1) + (1,) * (store.store.dim() - 2)).to(
                store.store.device)
            if data.size > 1:
                data.allreduce_tensor(local)
            if flip:      # adjoint slots run backwards in forward point order
                local = local.flip(0)
            full = self.gather_rows(local, local.shape[1:])
            if full is not None:
                out[name] = full
        return {"warm": out}

    def load_state_dict(self, ckpt) -> None:
        if self.fwd_store is None or "warm" not in ckpt or "forward" not in ckpt["warm"]:
            return
        warm, n = ckpt["warm"], self.fwd_store.n
        if warm["forward"].shape[1] != n:
            raise CheckpointError(f"checkpoint warm states are for {warm['forward'].shape[1]} "
                                  f"training samples, this run has {n}")
        lo, hi = self.net.lo, self.net.hi
        last = torch.from_numpy(warm["last_used"][()])
        for name, store, flip in (("forward", self.fwd_store, False),
                                  ("adjoint", self.adj_store, True)):
            local = torch.from_numpy(warm[name][lo:hi + 1])
            store.store = (local.flip(0) if flip else local).to(self.net.device, self.net.dtype)
            store.last_used = last.clone()
            store.clock = int(warm["clock"][()])
