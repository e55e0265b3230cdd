"""``mgrit`` (exact: forward and adjoint to tolerance) and ``oneshot`` (a fixed few
warm-started iterations of each per step: the simultaneous, inexact-gradient method).

Warm start (oneshot): every training sample keeps its forward and adjoint iterates from
the last step that used it, so mini-batches work as well as the full batch. Only the
level-0 C-points are kept (``MGRIT.warm_rows``: every solve's first F-relaxation
recomputes the F-points from them before any is read, so training is bitwise the same as
with every point kept). Memory per rank: 2 x (local C-points) x n_train x state size,
1/cfactor of all points.

Adaptive iteration counts (oneshot, ``oneshot.check_every``): every check_every-th step
also takes the exact gradient g* (both solves cold, to ``mgrit.tol``) of the same batch at
the same weights, and the optimizer steps along it. When the one-shot gradient g has
drifted, ``||g - g*|| / ||g*|| > oneshot.max_error``, the forward and the adjoint
iteration counts go up by one, to at most ``mgrit.max_iter`` (a run that needs it ends up
at exact solves); below 1 the error keeps -g a descent direction (g . g* > 0). Once the
error falls below ``oneshot.min_error`` they go down by one again, to no fewer than the
configured ``train.fwd_iters``/``adj_iters``. The warm starts keep the one-shot iterates:
a check measures, it does not improve the next step's start.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from mpi4py import MPI

from mgrit_nn.methods.base import Batch, PartitionedMethod, StepInfo, correct
from mgrit_nn.methods.store import sample_tensor
from mgrit_nn.mgrit import MGRIT, Warm
from mgrit_nn.runtime import CheckpointError
from mgrit_nn.setup_run import Run

log = logging.getLogger("mgrit_nn.train")
WARM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WarmStore:
    """Per-sample iterates of one solver at the rows a warm start reads (this rank's
    level-0 C-points), filled as samples are used.

    ``points``: the forward point index of each row (the adjoint's rows are its reversed
    points). ``last_used[i]`` counts the puts up to the one that stored sample i (-1:
    never), so replicas, which put once per step each, can tell whose copy is newest.
    """

    def __init__(self, n_samples: int, solver: MGRIT, reverse_of: int | None = None,
                 dtype: torch.dtype | None = None, mmap: bool = False,
                 mmap_dir: str | None = None) -> None:
        self.n, self.dtype, self.solver_dtype = n_samples, dtype or solver.dtype, solver.dtype
        self.mmap, self.mmap_dir = mmap, mmap_dir
        self.rows, points = solver.warm_rows()
        self.points = np.array([reverse_of - p if reverse_of is not None else p
                                for p in points], dtype=np.int64)
        self.store: torch.Tensor | None = None
        self.last_used = torch.full((n_samples,), -1, dtype=torch.int64)
        self.clock = 0

    def _everything(self, idx: torch.Tensor) -> bool:
        """Full batch in natural order: use the store itself, no gather/scatter copies."""
        return len(idx) == self.n and bool((idx == torch.arange(self.n)).all())

    def get(self, idx: torch.Tensor) -> Warm | None:
        if self.store is None or not bool((self.last_used[idx] >= 0).any()):
            return None
        values = self.store if self._everything(idx) else \
            self.store[:, idx.to(self.store.device)]
        return self.rows, values.to(self.rows.device, self.solver_dtype)

    def put(self, idx: torch.Tensor, u: torch.Tensor) -> None:
        """Keep the rows of ``u`` (the solver's level-0 states) for the samples ``idx``."""
        if self.store is None:
            self.allocate(tuple(u.shape[2:]), u.device)
        here = self.store.device == u.device
        if self._everything(idx) and self.dtype == u.dtype and here:
            torch.index_select(u, 0, self.rows, out=self.store)
        elif self._everything(idx):
            self.store.copy_(u.index_select(0, self.rows))
        else:
            self.store[:, idx.to(self.store.device)] = \
                u.index_select(0, self.rows).to(self.store.device, self.dtype)
        self.last_used[idx] = self.clock
        self.clock += 1

    def allocate(self, state: tuple[int, ...], device: torch.device) -> None:
        """The zeroed store: on ``device``, or memory-mapped on the CPU (``mmap``)."""
        self.store = sample_tensor((len(self.rows), self.n) + state, self.dtype, device,
                                   self.mmap_dir, self.mmap)

    def nbytes(self) -> int:
        return 0 if self.store is None else self.store.numel() * self.store.element_size()


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
        net, N = self.net, run.cfg.model.layers
        kw = {"dtype": WARM_DTYPES.get(t.warm_dtype),      # "same": the run's dtype
              "mmap": t.warm_store == "mmap", "mmap_dir": t.warm_store_dir}
        self.fwd_store = WarmStore(n, net.solver, **kw) if warm else None
        self.adj_store = WarmStore(n, net.adjoint, reverse_of=N, **kw) if warm else None
        o = run.cfg.oneshot
        self.check_every = o.check_every if not exact and not fixed_iters else 0
        self.max_error, self.min_error, self.calls = o.max_error, o.min_error, 0
        self.max_iter, self.least = run.cfg.mgrit.max_iter, (t.fwd_iters, t.adj_iters)

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
        adj = net.adj_result
        info = StepInfo(loss * scale, correct(logits, y), fwd.iters, fwd.residuals[-1],
                        adj.iters, adj.residuals[-1], fwd.residuals, adj.residuals)
        self.calls += 1
        if self.check_every and self.calls % self.check_every == 0:
            grads = self._check(batch, grads, info)
        for p, g in zip(self.parameters(), grads, strict=True):
            p.grad = g.detach().clone()
        return info

    def _check(self, batch: Batch, grads: list[torch.Tensor], info: StepInfo) -> list:
        """The exact gradient of the batch, the one-shot gradient's relative error against
        it (over every rank and replica, the same value everywhere), and the raised counts
        (module docstring). Returns the exact gradient."""
        net = self.net
        net.solve_forward(batch.x)
        net.loss(batch.y)
        exact = net.backprop(batch.x, batch.y, batch.scale)
        diff = torch.cat([(g - e).flatten() for g, e in zip(grads, exact, strict=True)])
        ref = torch.cat([e.flatten() for e in exact])
        if self.run.data_msg.size > 1:            # the batch's gradient: every replica's sum
            both = torch.stack([diff, ref])
            self.run.data_msg.allreduce_tensor(both)
            diff, ref = both[0], both[1]
        error = (self.dot(float(diff @ diff)) / max(self.dot(float(ref @ ref)), 1e-300)) ** 0.5
        info.extra["grad_error"] = error
        change = 1 if error > self.max_error else -1 if error < self.min_error else 0
        for kw, least in zip((self.fwd_kw, self.adj_kw), self.least, strict=True):
            kw["max_iter"] = min(max(kw["max_iter"] + change, least), self.max_iter)
        return exact

    def loss(self, batch: Batch) -> float:
        """Loss of the exact forward pass (line search)."""
        self.net.propagate(batch.x)
        return self.net.loss(batch.y)[0] * batch.scale

    def state_dict(self) -> dict:
        """``warm``: the global warm-start iterates at the stored points (``<name>_points``,
        forward point indices, increasing), gathered on rank 0; with adaptive counts,
        ``iterations``: the current counts and the steps taken."""
        out = {}
        if self.check_every:
            out["iterations"] = {"fwd_iters": np.array(self.fwd_kw["max_iter"]),
                                 "adj_iters": np.array(self.adj_kw["max_iter"]),
                                 "steps": np.array(self.calls)}
        warm = self._warm_state()
        return {**out, "warm": warm} if warm else out

    def _warm_state(self) -> dict:
        fs, ads = self.fwd_store, self.adj_store
        if fs is None or fs.store is None:
            return {}
        data = self.run.data_msg
        last = fs.last_used.numpy().copy()
        data.comm.Allreduce(MPI.IN_PLACE, last, op=MPI.MAX)
        out = {"last_used": last, "clock": np.array(fs.clock)}
        for name, store, flip in (("forward", fs, False), ("adjoint", ads, True)):
            mine = (torch.from_numpy(last) == store.last_used) & (store.last_used >= 0)
            kept = store.store.to(self.net.dtype)           # checkpoints: the run's dtype
            local = kept * mine.view((1, -1) + (1,) * (kept.dim() - 2)).to(kept.device)
            if data.size > 1:
                data.allreduce_tensor(local)
            if flip:      # adjoint rows run backwards in forward point order
                local = local.flip(0)
            full = self.rows_part(local, local.shape[1:])
            points = self.rows_part(torch.from_numpy(np.sort(store.points)), ())
            if full is not None:
                out[name], out[f"{name}_points"] = full, points
        return out

    def load_state_dict(self, ckpt) -> None:
        if self.check_every and "iterations" in ckpt:
            it = ckpt["iterations"]
            self.fwd_kw["max_iter"] = int(it["fwd_iters"][()])
            self.adj_kw["max_iter"] = int(it["adj_iters"][()])
            self.calls = int(it["steps"][()])
        if self.fwd_store is None or "warm" not in ckpt or "forward" not in ckpt["warm"]:
            return
        warm, n = ckpt["warm"], self.fwd_store.n
        if warm["forward"].shape[1] != n:
            raise CheckpointError(f"checkpoint warm states are for {warm['forward'].shape[1]} "
                                  f"training samples, this run has {n}")
        stores = (("forward", self.fwd_store), ("adjoint", self.adj_store))
        picked = {name: self._rows_of(warm, name, store.points) for name, store in stores}
        if any(p is None for p in picked.values()):
            log.warning("warm starts not restored: the checkpoint holds them at other points "
                        "(another mgrit.cfactor?); the first steps start cold")
            return
        last = torch.from_numpy(warm["last_used"][()])
        for name, store in stores:
            values = picked[name]
            store.allocate(tuple(values.shape[2:]), self.net.device)
            store.store.copy_(values.to(store.store.device, store.dtype))
            store.last_used = last.clone()
            store.clock = int(warm["clock"][()])

    @staticmethod
    def _rows_of(warm, name: str, points: np.ndarray) -> torch.Tensor | None:
        """The checkpoint's states at ``points`` (in that order), or None if it lacks some.
        Checkpoints that stored every point have no ``<name>_points``."""
        stored = warm[f"{name}_points"][()] if f"{name}_points" in warm \
            else np.arange(warm[name].shape[0])
        pos = np.searchsorted(stored, points)
        if len(points) and (pos.max() >= len(stored) or (stored[pos] != points).any()):
            return None
        order = np.argsort(pos)                 # h5py reads increasing indices
        rows = np.asarray(warm[name][pos[order]]) if len(points) else \
            np.zeros((0,) + warm[name].shape[1:])
        return torch.from_numpy(rows[np.argsort(order)])

    def report(self, data) -> dict:
        """Bytes of this rank's warm-start stores (rank 0's, as the result reports it)."""
        stores = [s for s in (self.fwd_store, self.adj_store) if s is not None]
        return {"warm_store_bytes": sum(s.nbytes() for s in stores)} if stores else {}
