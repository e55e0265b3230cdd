"""``penalty`` and ``al``: stage-parallel training (Sun et al., Algorithm 1; design §7).

The network is cut into K stages, one per rank of the layer partition. Stage k > 0
starts from a free auxiliary state lambda_k per training sample (stage 0 from the
data), runs its steps and updates its weights by backpropagation of its local loss

    stage k < K-1:  (beta/#) |lambda_{k+1} - X^k_end|^2 + <kappa_{k+1}, X^k_end> / B
    stage K-1:      cross-entropy of the classifier on X^{K-1}_end

(# = B * state size, B the batch size). Every stage works at once: a stage needs
only lambda_{k+1} and kappa_{k+1} of the batch from its right neighbour, and its
right neighbour needs X^k_end to correct lambda_{k+1} -- two interface-sized
messages per stage and step. The correction (the paper's eqs. (22), (23)) is a
descent step on the relaxed Lagrangian in lambda_k, per sample, with a = 2 beta / n:

    lambda_k <- lambda_k - eta_lambda / (1 + eta_lambda c) (a (lambda_k - X^{k-1}_end)
                                                            + B P_k - kappa_k)
    kappa_k  <- kappa_k  - eta_kappa a (lambda_k - X^{k-1}_end)                  (al only)

with n the state size of one sample and P_k the gradient of stage k's local loss with
respect to its input (B P_k: the sample's own share). The factor 1 / (1 + eta_lambda c)
keeps the step stable as beta rises: c = 2a (c = a on the last stage) is the curvature
of the two penalty terms lambda_k enters, taking the stage's Jacobian as the identity;
for eta_lambda * c << 1 the step is the paper's explicit one (its penalty-term scaling
by # instead of n would make lambda all but frozen for per-sample variables).
The multiplier step uses the new lambda_k. The correction is applied once and repeated
while the mean squared violation exceeds tau_j, at most ``penalty.inner_max`` times (read
literally, the paper's while-loop never corrects a feasible start: lambda would stay
put). ``penalty`` is ``al`` with kappa = 0. With K = 1 the only stage is the whole
network and the method is serial training.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mgrit_nn.io.checkpoint import CheckpointError
from mgrit_nn.methods.base import Batch, PartitionedMethod, StepInfo, correct
from mgrit_nn.model.regularization import regularization
from mgrit_nn.model.stage import Stage


class SampleStore:
    """One state per training sample (rows indexed by dataset index), in memory or in a
    memory-mapped ``.npy`` file of this rank (for data sets whose states exceed RAM)."""

    def __init__(self, n: int, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device, path: Path | None = None) -> None:
        self.device, self.dtype = device, dtype
        if path is None:
            self.rows = torch.zeros((n,) + shape, dtype=dtype, device=device)
            self.mm = None
        else:
            np_dtype = torch.empty((), dtype=dtype).numpy().dtype
            self.mm = np.lib.format.open_memmap(path, mode="w+", dtype=np_dtype,
                                                shape=(n,) + shape)
            self.rows = None

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        if self.mm is None:
            return self.rows[idx.to(self.device)]
        return torch.from_numpy(self.mm[idx.numpy()]).to(self.device)

    def put(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        if self.mm is None:
            self.rows[idx.to(self.device)] = values
        else:
            self.mm[idx.numpy()] = values.detach().cpu().numpy()

    def array(self) -> np.ndarray:
        return self.rows.cpu().numpy() if self.mm is None else np.asarray(self.mm)

    def load(self, values: np.ndarray) -> None:
        if self.mm is None:
            self.rows.copy_(torch.from_numpy(values))
        else:
            self.mm[...] = values


def beta_tau(cfg, step: int) -> tuple[float, float]:
    """beta_j and tau_j of phase j = number of beta milestones before ``step`` (1-based)."""
    j = sum(1 for m in cfg.beta_milestones if step > m)
    taus = cfg.tol if isinstance(cfg.tol, list) else [cfg.tol]
    return cfg.beta * cfg.beta_rise ** j, float(taus[min(j, len(taus) - 1)])


class PenaltyMethod(PartitionedMethod):
    def __init__(self, run) -> None:
        super().__init__(run)
        self.cfg, self.al = run.cfg.penalty, run.cfg.train.method == "al"
        self.stage = st = Stage(self.net)
        self.n_state = math.prod(run.shapes.state)
        self.t = 0                                   # gradient evaluations so far
        self.busy = (0.0, 0.0)                       # wall-clock span of the last local work
        self.noise = torch.Generator(device="cpu")
        n = len(run.data.x_train)
        self.lam = self.kap = None
        if not st.first:
            paths = [None, None]
            if self.cfg.store == "mmap":
                d = Path(self.cfg.store_dir or tempfile.gettempdir())
                d.mkdir(parents=True, exist_ok=True)
                tag = f"mgrit_nn_{run.world.Get_rank()}_{id(self)}"
                paths = [d / f"{tag}_lambda.npy", d / f"{tag}_kappa.npy"]
            args = (n, run.shapes.state, run.dtype, run.device)
            self.lam = SampleStore(*args, paths[0])
            if self.al:
                self.kap = SampleStore(*args, paths[1])
        self._initialize(run.data.x_train.to(run.device, run.dtype))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor, chunk: int = 4096) -> None:
        """lambda_k = the state the initial network reaches at interface k (feasible start):
        one exact forward sweep, whose ghost slot holds the left neighbour's last state."""
        for lo in range(0, len(x), chunk):
            self.net.propagate(x[lo:lo + chunk])
            if self.lam is not None:
                self.lam.put(torch.arange(lo, min(lo + chunk, len(x))),
                             self.net.solver.data[0].u[0])

    # -- one step ------------------------------------------------------------------------
    def step(self, batch: Batch) -> StepInfo:
        x, y, idx, scale = batch.x, batch.y, batch.idx, batch.scale
        st, net, c = self.stage, self.net, self.cfg
        self.t += 1
        beta, tau = beta_tau(c, self.t)
        B, n = len(idx), self.n_state
        shape = st.state_shape(B)
        lam = kap = None
        if not st.first:
            lam = self.lam.get(idx)
            kap = self.kap.get(idx) if self.al else None
        # interface messages, posted before any work: lambda/kappa go left, X_end goes right
        m = 2 if self.al else 1
        from_right = torch.empty((m,) + shape, dtype=net.dtype, device=net.device)
        from_left = torch.empty(shape, dtype=net.dtype, device=net.device)
        recv_r, recv_l = st.recv_right(from_right), st.recv_left(from_left)
        sends = [st.send_left(torch.stack([lam, kap]) if self.al else lam.unsqueeze(0))
                 ] if lam is not None else []
        t_busy = time.time()
        params = net.local_parameters()
        with torch.enable_grad():
            if st.first:
                inp = x
            else:
                inp = lam.clone().requires_grad_()
            fwd_in = inp
            if st.last and not st.first and c.noise > 0:
                self.noise.manual_seed(net.cfg.seed * 1_000_003 + self.t)
                fwd_in = inp + c.noise * torch.randn(inp.shape, generator=self.noise,
                                                     dtype=inp.dtype).to(inp.device)
            X = st.forward(fwd_in)
            sends.append(st.send_right(X.detach()))
            logits = None
            if st.last:
                logits = net.classifier(X)
                local = F.cross_entropy(logits, y)
            else:
                recv_r.wait()
                local = beta / (B * n) * ((from_right[0] - X) ** 2).sum()
                if self.al:
                    local = local + (from_right[1] * X).sum() / B
            wrt = params + ([inp] if not st.first else [])
            grads = torch.autograd.grad(local, wrt, allow_unused=True, materialize_grads=True)
        pgrads = [g * scale for g in grads[:len(params)]]
        reg = 0.0
        if net.reg is not None:          # the reg.* terms belong to the weights' own stages
            reg, rgrads = regularization(net, net.reg)
            pgrads = [g + scale * r for g, r in zip(pgrads, rgrads, strict=True)]
        for p, g in zip(params, pgrads, strict=True):
            p.grad = g.detach()
        self.busy = (t_busy, time.time())
        violation = 0.0
        if not st.first:
            recv_l.wait()
            violation = self._correct(idx, lam, kap, from_left, B * grads[-1], beta, tau)
        for s in sends:
            if s is not None:
                s.wait()
        msg = net.msg
        local_sum = msg.allreduce_sum(float(local.detach()) * scale)
        violation = msg.allreduce_sum(violation)
        extra = {"violation": violation, "beta": beta, "local_loss": local_sum}
        if c.honest_every and (self.t % c.honest_every == 0 or self.t == 1):
            net.propagate(x)       # the full serial forward pass through all stages
            loss, logits = net.loss(y, with_reg=False)
            extra["honest_loss"] = loss
        else:            # the last stage's own loss, the same on every rank
            buf = torch.tensor([float(local.detach()) if st.last else 0.0],
                               dtype=torch.float64)
            loss = float(msg.bcast_tensor(buf, root=net.chain.ranks[-1])[0])
        return StepInfo((loss + reg) * scale, correct(logits, y), extra=extra)

    @torch.no_grad()
    def _correct(self, idx, lam, kap, x_prev, P, beta: float, tau: float) -> float:
        """The lambda (and kappa) correction of this rank's interface; returns the mean
        squared violation |lambda - X^{k-1}_end|^2 / # before it."""
        c, n = self.cfg, self.n_state
        a = 2 * beta / n
        curv = a if self.stage.last else 2 * a    # both penalty terms, stage Jacobian ~ I
        diff = lam - x_prev
        before = float((diff ** 2).mean())
        psi, it = before, 0
        while it == 0 or (psi > tau and it < c.inner_max):   # at least one correction
            g = P if kap is None else P - kap
            lam = lam - c.lr_lambda * (a * diff + g) / (1 + c.lr_lambda * curv)
            diff = lam - x_prev
            if kap is not None:
                kap = kap - c.lr_kappa * a * diff
            psi, it = float((diff ** 2).mean()), it + 1
        self.lam.put(idx, lam)
        if kap is not None:
            self.kap.put(idx, kap)
        return before

    # -- checkpoint: lambda, kappa by interface ------------------------------------------
    def state_dict(self) -> dict:
        """``penalty``: lambda (and kappa) by interface, the step count (on rank 0)."""
        out = {"t": np.array(self.t)}
        interfaces = np.array(self.net.chain.starts[1:-1], dtype=np.int64)
        for name, store in (("lambda", self.lam), ("kappa", self.kap)):
            if name == "kappa" and not self.al:
                continue
            local = torch.from_numpy(store.array()).flatten() if store is not None \
                else torch.zeros(0, dtype=self.net.dtype)
            full = self.net.gather_flat(local)
            if full is not None:
                shape = (-1, len(self.run.data.x_train)) + tuple(self.run.shapes.state)
                out[name] = full.view(shape).numpy()
        out["interfaces"] = interfaces
        return {"penalty": out}

    def load_state_dict(self, ckpt) -> None:
        if "penalty" not in ckpt:
            return
        f = ckpt["penalty"]
        lam = f["lambda"]
        K = self.stage.K
        if lam.shape[0] != K - 1 or lam.shape[1] != len(self.run.data.x_train):
            raise CheckpointError(
                f"checkpoint holds lambda for {lam.shape[0] + 1} stages and {lam.shape[1]} "
                f"samples; this run has {K} stages and {len(self.run.data.x_train)}: resume "
                f"{self.run.cfg.train.method} on the same number of ranks (or --init-from)")
        if self.al and "kappa" not in f:
            raise CheckpointError("checkpoint has no kappa (written by penalty, not al)")
        self.t = int(f["t"][()])
        k = self.stage.k
        if k > 0:
            self.lam.load(lam[k - 1])
            if self.al:
                self.kap.load(f["kappa"][k - 1])

