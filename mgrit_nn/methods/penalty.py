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
network and the method is serial training. ``penalty.literal`` undoes these departures
one at a time (the ablation of docs/training.md).

``penalty.init: shallow`` (Algorithm 1 step [2]) starts from a trained shallow network
of every n-th layer, its blocks replicated (:class:`~mgrit_nn.model.coarse.Shallow`, the
facility parpas' global prediction uses), lambda from it (``penalty.lambda_init``).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from mgrit_nn.methods.base import Batch, PartitionedMethod, StepInfo, correct
from mgrit_nn.methods.store import sample_tensor
from mgrit_nn.model.coarse import Shallow
from mgrit_nn.model.stage import Stage
from mgrit_nn.runtime import CheckpointError


class SampleStore:
    """One state per training sample (rows indexed by dataset index), in memory or
    memory-mapped (:func:`~mgrit_nn.methods.store.sample_tensor`; for data sets whose
    states exceed RAM)."""

    def __init__(self, n: int, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device, mmap: bool = False, mmap_dir: str | None = None) -> None:
        self.device = device
        self.rows = sample_tensor((n,) + shape, dtype, device, mmap_dir, mmap)

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        return self.rows[idx.to(self.rows.device)].to(self.device)

    def put(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        self.rows[idx.to(self.rows.device)] = values.detach().to(self.rows.device)

    def array(self) -> np.ndarray:
        return self.rows.cpu().numpy()

    def load(self, values: np.ndarray) -> None:
        self.rows.copy_(torch.from_numpy(values))


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
        self.cpu_steps: list[float] = []             # CPU s of each step's local work (no waits)
        self.wait_cpu = 0.0
        self.noise = torch.Generator(device="cpu")
        n = len(run.data.x_train)
        self.lam = self.kap = None
        self.started = False
        self.opt: torch.optim.Optimizer | None = None
        if not st.first:
            args = (n, run.shapes.state, run.dtype, run.device, self.cfg.store == "mmap",
                    self.cfg.store_dir)
            self.lam = SampleStore(*args)
            if self.al:
                self.kap = SampleStore(*args)
        self._initialize(run.data.x_train.to(run.device, run.dtype))

    def bind(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt          # its learning rate, for ``literal: [schedule]``

    def start(self) -> dict[str, float]:
        """``penalty.init: shallow``: train the shallow network, replicate its blocks into
        the stages, then lambda from the new network (``penalty.lambda_init``); nothing once
        done or restored from a checkpoint, nothing with ``init: random``. Logs the shallow
        network's loss and the replicated deep network's (a serial pass): far apart, the
        shallow step ``shallow_every * h`` is too coarse for the start to transfer."""
        c = self.cfg
        if self.started or c.init != "shallow":
            self.started = True
            return {}
        t0 = time.perf_counter()
        x = self.run.data.x_train.to(self.net.device, self.net.dtype)
        y = self.run.data.y_train.to(self.net.device)
        shallow = Shallow(self.net, self.run_layout.size, self.shallow_every())
        loss = shallow.train(x, y, c.shallow_steps, c.shallow_lr, self.run.cfg.train,
                             self.run.cfg.data)
        shallow.inject()
        from_shallow = c.lambda_init == "shallow"
        replicated = self._initialize(x, y, store=not from_shallow)   # did it transfer?
        if from_shallow and self.lam is not None:
            self.lam.put(torch.arange(len(x)), shallow.state_at(x, self.net.lo - 1))
        self.started = True
        return {"shallow_loss": loss, "replicated_loss": replicated,
                "shallow_s": time.perf_counter() - t0}

    def shallow_every(self) -> int:
        """Fine layers per shallow block: ``penalty.shallow_every``, 0 = L/K (one per stage)."""
        return self.cfg.shallow_every or self.net.cfg.layers // self.stage.K

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor, y: torch.Tensor | None = None, store: bool = True,
                    chunk: int = 4096) -> float:
        """lambda_k = the state the initial network reaches at interface k (feasible start):
        one exact forward sweep in chunks, whose ghost slot holds the left neighbour's last
        state (``store``); with ``y``, returns the network's mean cross-entropy on x."""
        total = 0.0
        for lo in range(0, len(x), chunk):
            hi = min(lo + chunk, len(x))
            self.net.propagate(x[lo:hi])
            if store and self.lam is not None:
                self.lam.put(torch.arange(lo, hi), self.net.solver.ghost())
            if y is not None:
                total += self.net.loss(y[lo:hi], with_reg=False)[0] * (hi - lo)
        return total / len(x)

    # -- one step ------------------------------------------------------------------------
    def step(self, batch: Batch) -> StepInfo:
        """Algorithm 1, one iteration on every stage at once: post the interface messages,
        the stage's local step (weights), the lambda/kappa correction (eqs. 22-23), the log."""
        x, y, idx, scale = batch.x, batch.y, batch.idx, batch.scale
        st, c = self.stage, self.cfg
        self.t += 1
        beta, tau = beta_tau(c, self.t)
        lam = None if st.first else self.lam.get(idx)
        kap = self.kap.get(idx) if self.al and not st.first else None
        from_left, from_right, recv_l, recv_r, sends = self._post(len(idx), lam, kap)
        t_busy, cpu0, self.wait_cpu = time.time(), time.process_time(), 0.0
        local = st.local_step(x if st.first else lam.clone(), y,
                              lambda X: self._penalty(X, from_right, recv_r, beta),
                              scale, self._noise if st.last and not st.first else None)
        self.busy = (t_busy, time.time())
        violation = 0.0
        if not st.first:
            self._wait(recv_l)
            violation = self._correct(idx, lam, kap, from_left, len(idx) * local.input_grad,
                                      beta, tau)
        self.cpu_steps.append(time.process_time() - cpu0 - self.wait_cpu)
        for s in sends + local.sends:
            if s is not None:
                s.wait()
        return self._info(x, y, local, violation, beta, scale)

    def _post(self, B: int, lam, kap):
        """The interface messages, posted before any work: lambda (and kappa) go left to the
        stage whose end they constrain, X_end goes right (sent by the local step)."""
        st, net = self.stage, self.net
        shape = st.state_shape(B)
        from_right = torch.empty((2 if self.al else 1,) + shape, dtype=net.dtype,
                                 device=net.device)
        from_left = torch.empty(shape, dtype=net.dtype, device=net.device)
        recv_r, recv_l = st.recv_right(from_right), st.recv_left(from_left)
        sends = [st.send_left(torch.stack([lam, kap]) if self.al else lam.unsqueeze(0))
                 ] if lam is not None else []
        return from_left, from_right, recv_l, recv_r, sends

    def _penalty(self, X, from_right, recv_r, beta: float) -> torch.Tensor:
        """Stage k < K-1's objective: (beta/#) |lambda_{k+1} - X|^2 (+ <kappa_{k+1}, X> / B)."""
        self._wait(recv_r)
        B = len(X)
        local = beta / (B * self.n_state) * ((from_right[0] - X) ** 2).sum()
        if self.al:
            local = local + (from_right[1] * X).sum() / B
        return local

    def _wait(self, req) -> None:
        """Complete a receive; its CPU time (MPI polls) is not the stage's compute."""
        c0 = time.process_time()
        req.wait()
        self.wait_cpu += time.process_time() - c0

    def _noise(self, inp: torch.Tensor) -> torch.Tensor:
        """The last stage's input lambda_{K-1} with Gaussian noise (``penalty.noise``)."""
        if self.cfg.noise <= 0:
            return inp
        self.noise.manual_seed(self.net.cfg.seed * 1_000_003 + self.t)
        return inp + self.cfg.noise * torch.randn(inp.shape, generator=self.noise,
                                                  dtype=inp.dtype).to(inp.device)

    def _info(self, x, y, local, violation: float, beta: float, scale: float) -> StepInfo:
        """The step's columns; the logged loss is the honest one of a serial forward pass
        every ``penalty.honest_every`` steps, else the last stage's own (same on every rank)."""
        net, c, msg = self.net, self.cfg, self.net.msg
        value = float(local.objective.detach())
        extra = {"violation": msg.allreduce_sum(violation), "beta": beta,
                 "local_loss": msg.allreduce_sum(value * scale)}
        logits = local.logits
        if c.honest_every and (self.t % c.honest_every == 0 or self.t == 1):
            net.propagate(x)       # the full serial forward pass through all stages
            loss, logits = net.loss(y, with_reg=False)
            extra["honest_loss"] = loss
        else:
            loss = self.stage.from_last(value)
        return StepInfo((loss + local.reg) * scale, correct(logits, y), extra=extra)

    def _rates(self, beta: float, B: int) -> tuple[float, float, float, float, float]:
        """(lambda step eta, a on lambda's own penalty term, curvature c, kappa rate, scale of
        B P_k) of the correction; ``penalty.literal`` undoes our departures one by one."""
        lit, c, n, last = set(self.cfg.literal), self.cfg, self.n_state, self.stage.last
        per = B if "scaling" in lit else 1        # the paper's # = B n, its P (batch mean)
        a = 2 * beta / (n * per)
        a_own = 0.0 if last and "last" in lit else a      # Algorithm 1's last line: no psi
        curv = 0.0 if "explicit" in lit else (a_own if last else a_own + a)
        k_rate = c.lr_kappa * (B * n / (2 * beta) if "kappa" in lit else a)
        sched = self._schedule()
        return c.lr_lambda * sched, a_own, curv, k_rate * sched, 1.0 / per

    def _schedule(self) -> float:
        """The lambda and kappa steps' factor: with ``literal: [schedule]`` the weights'
        learning rate over train.lr (the paper's one eta for weights, lambda and kappa,
        eqs. 21-23, scheduled by Algorithm 1 step [6]); else 1 (constant steps)."""
        if "schedule" not in self.cfg.literal or self.opt is None:
            return 1.0
        return self.opt.param_groups[0]["lr"] / self.run.cfg.train.lr

    @torch.no_grad()
    def _correct(self, idx, lam, kap, x_prev, P, beta: float, tau: float) -> float:
        """The lambda (and kappa) correction of this rank's interface; returns the mean
        squared violation |lambda - X^{k-1}_end|^2 / # before it."""
        c = self.cfg
        eta, a_own, curv, k_rate, g_scale = self._rates(beta, len(idx))
        forced = "loop" not in c.literal
        diff = lam - x_prev
        before = float((diff ** 2).mean())
        psi, it = before, 0
        while (forced and it == 0) or (psi > tau and it < c.inner_max):
            g = P * g_scale if kap is None else P * g_scale - kap
            lam = lam - eta * (a_own * diff + g) / (1 + eta * curv)
            diff = lam - x_prev
            if kap is not None:
                kap = kap - k_rate * diff
            psi, it = float((diff ** 2).mean()), it + 1
        self.lam.put(idx, lam)
        if kap is not None:
            self.kap.put(idx, kap)
        return before

    def report(self, data) -> dict:
        """Per-stage CPU seconds of the local work (waits excluded) and the critical-path
        estimate sum_t max_k cpu_{k,t} (the stages run at once; messages not included)."""
        steps = self.net.msg.comm.allgather(self.cpu_steps) if self.net.msg.size > 1 \
            else [self.cpu_steps]
        per_step = np.max(np.array(steps), axis=0) if steps and steps[0] else np.zeros(0)
        return {"stage_cpu_s": [float(sum(s)) for s in steps],
                "critical_path_s": float(per_step.sum())}

    # -- checkpoint: lambda, kappa by interface ------------------------------------------
    def state_dict(self) -> dict:
        """``penalty``: lambda (and kappa) by interface, the step count (on rank 0)."""
        out = {"t": np.array(self.t)}
        interfaces = np.array(self.net.chain.starts[1:-1], dtype=np.int64)
        for name, store in (("lambda", self.lam), ("kappa", self.kap)):
            if name == "kappa" and not self.al:
                continue
            full = self.rows_part(None if store is None else torch.from_numpy(store.array()),
                                    (len(self.run.data.x_train),) + tuple(self.run.shapes.state))
            if full is not None:
                out[name] = full
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
        self.t, self.started = int(f["t"][()]), True
        k = self.stage.k
        if k > 0:
            self.lam.load(lam[k - 1])
            if self.al:
                self.kap.load(f["kappa"][k - 1])

