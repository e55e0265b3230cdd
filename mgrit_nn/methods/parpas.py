"""``parpas``: predict globally, correct locally (Parpas & Muir, Algorithm 4).

**Global prediction.** A coarse network -- every ``parpas.coarsen``-th layer of the
network, step ``coarsen * h``, the same opening, classifier and step scheme -- is trained
serially for ``parpas.coarse_iters`` iterations. Every rank computes it (it is small:
the same inputs and operations give the same bits on every rank, after one gather of
the initial weights), then takes from it

- its own layers: fine layer j gets the weights of coarse layer ``j // coarsen``
  (piecewise constant in time), the opening / classifier as trained;
- its input state for every training sample: the final coarse trajectory at fine point
  ``lo - 1``, linearly interpolated in time between coarse points;
- the (state, co-state) pairs at its right interface (fine point ``hi``) of every coarse
  iteration and of the final coarse network, as regression data.

**Local correction.** The K ranks are K sub-systems (the layer partition). Per step,
in parallel: each rank runs its layers forward (:class:`~mgrit_nn.model.stage.Stage`)
from the input state it holds for the batch's samples, backward from a co-state at its
right interface -- the true one (``dloss/du_N``) on the last rank, elsewhere the
regression ``P(X) = A X + B`` of that interface -- and sets the gradients of its weights;
the optimizer updates them. Synchronization: the end state goes right (the right
neighbour's input for these samples next time), the pair (input state, co-state at the
input) goes left, where it is first scored against the regression (``regression_mse``,
the paper's diagnostic), then added to its data; the regression is refitted.

Co-states are per sample: ``P_i = d loss_i / d X_i`` for the sample's own loss (B times
the gradient of the batch mean), so they do not depend on the batch size. The sign is
that of the adjoint (the paper's P is its negative). Without a prediction phase
(``coarse_iters: 0``, the single-level variant) the inputs come from one exact forward
pass of the initial network and the regression predicts zero until the first pairs
arrive. With one rank the method is plain gradient descent on the whole network.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from mgrit_nn.methods.base import Batch, PartitionedMethod, StepInfo, correct
from mgrit_nn.model.coarse import CoarseNetwork, Shallow, at_point
from mgrit_nn.model.regression import Regression
from mgrit_nn.model.stage import Stage
from mgrit_nn.runtime import CheckpointError

CHUNK = 4096              # samples per piece of the whole-training-set passes


class ParpasMethod(PartitionedMethod):
    def __init__(self, run) -> None:
        super().__init__(run)
        self.cfg = run.cfg.parpas
        self.stage = st = Stage(self.net)
        self.d = int(np.prod(run.shapes.state))
        self.n = len(run.data.x_train)
        # this rank's interfaces: left = fine point lo-1 (input), right = hi (regression)
        groups = run.data.n_classes if self.cfg.per_class else 1
        self.regression = None if st.last else Regression(self.d, groups, self.cfg.ridge,
                                                          self.cfg.window)
        self.inputs = None if st.first else torch.zeros(
            (self.n,) + tuple(run.shapes.state), dtype=run.dtype, device=run.device)
        self.started = False

    def lr(self) -> float | None:
        """``parpas.lr``: the local corrections' own learning rate (None: ``train.lr``)."""
        return self.cfg.lr

    def _group(self, y: torch.Tensor) -> torch.Tensor:
        """The regression group of each sample: its class (``parpas.per_class``) or 0."""
        return y if self.cfg.per_class else torch.zeros_like(y)

    # -- the two phases' starts ------------------------------------------------------------
    def start(self) -> dict[str, float]:
        """Global prediction (or, without it, one exact forward pass for the inputs); nothing
        once done (also when restored from a checkpoint)."""
        if self.started:
            return {}
        t0 = time.perf_counter()
        x = self.run.data.x_train.to(self.net.device, self.net.dtype)
        y = self.run.data.y_train.to(self.net.device)
        extra = {}
        if self.cfg.coarse_iters > 0:
            extra["coarse_loss"] = self._predict(x, y)
        else:
            self._forward_inputs(x)
        self.started = True
        extra["prediction_s"] = time.perf_counter() - t0
        return extra

    @torch.no_grad()
    def _forward_inputs(self, x: torch.Tensor) -> None:
        """Inputs of every sample from one exact pass through the stages in turn."""
        st = self.stage
        for lo in range(0, len(x), CHUNK):
            xc = x[lo:lo + CHUNK]
            if st.first:
                inp = xc
            else:
                inp = torch.empty(st.state_shape(len(xc)), dtype=xc.dtype, device=xc.device)
                st.recv_left(inp).wait()
                self.inputs[lo:lo + len(xc)] = inp
            send = st.send_right(st.forward(inp))
            if send is not None:
                send.wait()

    def _predict(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Train the coarse network (:class:`~mgrit_nn.model.coarse.Shallow`, the facility
        ``penalty.init: shallow`` shares); interpolate its weights, states and co-states."""
        net, c = self.net, self.cfg
        shallow = Shallow(net, self.run_layout.size, c.coarsen)
        right = None if self.stage.last else net.hi            # this rank's regression point
        loss = shallow.train(x, y, c.coarse_iters, c.coarse_lr, self.run.cfg.train,
                             self.run.cfg.data,
                             lambda co, xb, yb, ps: self._coarse_pass(co, xb, yb, right, ps))
        for lo in range(0, self.n, CHUNK):        # final network: pairs for every sample
            self._coarse_pass(shallow.net, x[lo:lo + CHUNK], y[lo:lo + CHUNK], right, [])
        with torch.no_grad():
            if not self.stage.first:
                self.inputs.copy_(shallow.state_at(x, net.lo - 1))
            shallow.inject()
        return loss

    def _coarse_pass(self, coarse: CoarseNetwork, x, y, right: int | None,
                     params: list[torch.Tensor]) -> float:
        """Forward + backward of the coarse network: parameter gradients (``.grad``) and the
        (state, co-state) pairs at this rank's right interface, added to its regression."""
        c = self.cfg
        if right is None and not params:
            return float("nan")
        with torch.enable_grad():
            states = coarse.states(x)
            loss = F.cross_entropy(coarse.logits(states[-1]), y)
            wrt = list(params)
            if right is not None:
                q, r = divmod(right, c.coarsen)
                at = [q] if r == 0 else [q, q + 1]
                wrt += [states[i] for i in at]
            grads = torch.autograd.grad(loss, wrt) if wrt else []
        for p, g in zip(params, grads, strict=False):
            p.grad = g
        if right is not None:
            co = grads[len(params):]
            P = co[0] if r == 0 else (1 - r / c.coarsen) * co[0] + (r / c.coarsen) * co[1]
            X = at_point([s.detach() for s in states], right, c.coarsen)
            self.regression.add(X.flatten(1), len(x) * P.flatten(1), self._group(y))
        return float(loss.detach())

    # -- one step of the local correction ------------------------------------------------
    def step(self, batch: Batch) -> StepInfo:
        """Algorithm 4's local correction, every sub-system at once: post the interface
        messages, the local step from the stored input state and the regressed co-state,
        then exchange (input, co-state) pairs and end states, refit, log."""
        x, y, idx, scale = batch.x, batch.y, batch.idx, batch.scale
        st, net, B = self.stage, self.net, len(idx)
        shape = st.state_shape(B)
        from_left = None if st.first else torch.empty(shape, dtype=net.dtype, device=net.device)
        from_right = None if st.last else torch.empty((2,) + shape, dtype=net.dtype,
                                                      device=net.device)
        recv_l, recv_r = st.recv_left(from_left), st.recv_right(from_right)
        inp = x if st.first else self.inputs[idx.to(net.device)]
        local = st.local_step(inp, y, lambda X: self._costate_objective(X, y), scale)
        sends = local.sends
        if not st.first:       # (input state, its co-state) for the left neighbour's regression
            sends.append(st.send_left(torch.stack([inp.detach(), local.input_grad * B])))
        mse = p2 = 0.0
        if not st.last:
            recv_r.wait()
            mse, p2 = self._score_and_add(from_right[0].flatten(1), from_right[1].flatten(1), y)
        if not st.first:
            recv_l.wait()
            self.inputs[idx.to(net.device)] = from_left
        for s in sends:
            if s is not None:
                s.wait()
        return self._info(x, y, local, mse, p2, scale)

    def _costate_objective(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Backward from the regressed co-state P(X) of this rank's right interface."""
        P = self.regression.predict(X.detach().flatten(1), self._group(y)).view_as(X)
        return (P * X).sum() / len(X)

    @torch.no_grad()
    def _score_and_add(self, Xo, Po, y) -> tuple[float, float]:
        """The regression's error on the right neighbour's new pairs (the paper's
        diagnostic), then the pairs join its data; (squared error, squared co-state)."""
        mse = float(((self.regression.predict(Xo, self._group(y)) - Po) ** 2).mean())
        p2 = float((Po ** 2).mean())
        self.regression.add(Xo, Po, self._group(y))
        return mse, p2

    def _info(self, x, y, local, mse: float, p2: float, scale: float) -> StepInfo:
        net, msg, K = self.net, self.net.msg, self.stage.K
        mse, p2 = msg.allreduce_sum(mse), msg.allreduce_sum(p2)
        stage_loss = self.stage.from_last(float(local.objective.detach()))
        extra = {"regression_mse": mse / (K - 1) if K > 1 else float("nan"),
                 "regression_rel_mse": mse / p2 if K > 1 and p2 > 0 else float("nan"),
                 "stage_loss": stage_loss}
        logits = local.logits
        if self.cfg.exact_loss:            # the honest loss of the full network (pre-update)
            net.propagate(x)
            loss, logits = net.loss(y)
        else:
            loss = stage_loss + local.reg
        return StepInfo(loss * scale, correct(logits, y), extra=extra)

    # -- checkpoint: inputs and regression data by interface -----------------------------
    def _interfaces(self) -> np.ndarray:
        return np.array([s - 1 for s in self.net.chain.starts[1:-1]], dtype=np.int64)

    def state_dict(self) -> dict:
        """``parpas``: input states and regression data by interface (on rank 0)."""
        if not self.started:               # e.g. mgrit-nn init: the prediction is still to come
            return {}
        net, d = self.net, self.d
        out = {"interfaces": self._interfaces()}
        full = self.rows_part(self.inputs, (self.n,) + tuple(self.run.shapes.state))
        if full is not None:
            out["inputs"] = full
        groups = self.run.data.n_classes if self.cfg.per_class else 1
        blocks = self.regression.state() if self.regression is not None else \
            torch.zeros((0, groups, d + 1, 2 * d + 1), dtype=torch.float64)
        count = len(blocks)
        counts = net.msg.comm.allgather(count) if net.msg.size > 1 else [count]
        full = net.gather_flat(blocks.flatten())
        if full is not None:
            n_blocks = max(counts) if counts else 0
            out["regression"] = full.view(-1, n_blocks, groups, d + 1, 2 * d + 1).numpy()\
                if n_blocks else np.zeros((len(counts) - 1, 0, groups, d + 1, 2 * d + 1))
        return {"parpas": out}

    def load_state_dict(self, ckpt) -> None:
        from mgrit_nn.runtime import agree_on_config

        if "parpas" not in ckpt:
            return
        f = ckpt["parpas"]
        mine, theirs = self._interfaces(), f["interfaces"][()]

        def check() -> None:   # collective (every rank restores): one message, exit status 2
            if np.array_equal(mine, theirs):
                return
            raise CheckpointError(
                f"checkpoint of parpas on {len(theirs) + 1} ranks (interfaces at points "
                f"{theirs.tolist()}); this run has {len(mine) + 1} (interfaces "
                f"{mine.tolist()}): resume parpas on the same number of ranks, or start "
                f"a new run from its weights with --init-from")
        agree_on_config(check, self.run.world)
        k = self.stage.k
        if self.inputs is not None:
            self.inputs.copy_(torch.from_numpy(f["inputs"][k - 1]))
        if self.regression is not None:
            self.regression.load(f["regression"][k])
        self.started = True
