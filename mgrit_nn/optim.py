"""Optimizers and learning-rate schedules for every method.

SGD and Adam update each rank's local parameters (a layer lives on one rank, so no
reduction is needed) with torch.optim's arithmetic, bit for bit as its single-tensor path
computes it, and torch.optim's state names (checkpoints). They are written here because
torch.optim's step wrappers import torch._dynamo on first use, 2.3 s of CPU per rank on
every start (cProfile of a 20-step peaks run: 2.3 of 5.7 s). L-BFGS keeps its (s, y) pairs
locally and reduces every inner product over the layer-parallel group; its Armijo
backtracking evaluates the loss with the exact forward pass only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mgrit_nn.config import TrainConfig


def _skip_dynamo_import() -> None:
    """torch.optim.Optimizer wraps ``add_param_group`` (which ``__init__`` calls),
    ``zero_grad``, ``state_dict`` and ``load_state_dict`` in ``torch._disable_dynamo``,
    whose first call imports torch._dynamo to build ``torch._dynamo.disable(fn)`` and caches
    it in ``fn.__dynamo_disable``. Outside ``torch.compile`` that only calls ``fn``: filling
    the cache with ``fn`` itself skips the import. Done only where torch's wrapper is the
    one this was written against (torch 2.13); nothing of ours calls an optimizer inside a
    compiled region (``runtime.compile`` compiles the step function only)."""
    probe = torch._disable_dynamo(lambda: None)
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        wrapper = vars(torch.optim.Optimizer).get(name)
        fn = getattr(wrapper, "__wrapped__", None)
        if fn is not None and getattr(wrapper, "__code__", None) is probe.__code__ \
                and getattr(fn, "__dynamo_disable", None) is None:
            setattr(fn, "__dynamo_disable", fn)


_skip_dynamo_import()


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps a step count in."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _evaluate(closure: Callable | None):
    """The loss of a ``step(closure)`` (with gradients enabled, as in torch.optim)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Adam(torch.optim.Optimizer):
    """``torch.optim.Adam`` (L2 weight decay, no amsgrad): the same update, operation by
    operation, and the same state (``step``, ``exp_avg``, ``exp_avg_sq``)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            (beta1, beta2), lr, eps, wd = group["betas"], group["lr"], group["eps"], \
                group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                if wd != 0:
                    grad = grad.add(p, alpha=wd)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"].item()
                step_size = lr / (1 - beta1**step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss


class SGD(torch.optim.Optimizer):
    """``torch.optim.SGD`` (L2 weight decay, heavy-ball momentum without dampening): the same
    update and state (``momentum_buffer``, only with momentum)."""

    def __init__(self, params, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                if momentum != 0:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = grad.detach().clone()
                    else:
                        buf.mul_(momentum).add_(grad)
                    grad = buf
                p.add_(grad, alpha=-lr)
        return loss


class LBFGS(torch.optim.Optimizer):
    """Full-batch L-BFGS (two-loop recursion) with Armijo backtracking.

    ``dot(x)`` sums a local inner product over all ranks that hold parameters.
    ``step(closure)``, as ``torch.optim.LBFGS``: gradients are in ``.grad``; ``closure()``
    returns the loss at the parameters as they are (first called at the current point).
    """

    def __init__(self, params, lr: float, memory: int, max_ls: int, dot: Callable,
                 c1: float = 1e-4) -> None:
        super().__init__(params, {"lr": lr})
        self.memory, self.max_ls, self.c1, self.dot_sum = memory, max_ls, c1, dot
        self.pairs: list[tuple[list[torch.Tensor], list[torch.Tensor], float]] = []
        self.prev: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self.last_alpha, self.last_evals = 0.0, 0

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _dot(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return self.dot_sum(sum(float((x * y).sum()) for x, y in zip(a, b, strict=True)))

    def _direction(self, g: list[torch.Tensor]) -> list[torch.Tensor]:
        q = [-t for t in g]
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = rho * self._dot(s, q)
            alphas.append(a)
            q = [qi - a * yi for qi, yi in zip(q, y, strict=True)]
        if self.pairs:
            s, y, _ = self.pairs[-1]
            gamma = self._dot(s, y) / self._dot(y, y)    # collective: once, not per tensor
            q = [qi * gamma for qi in q]
        for (s, y, rho), a in zip(self.pairs, reversed(alphas), strict=True):
            b = rho * self._dot(y, q)
            q = [qi + (a - b) * si for qi, si in zip(q, s, strict=True)]
        return q

    @torch.no_grad()
    def step(self, closure: Callable[[], float]) -> float:  # type: ignore[override]
        loss = closure()
        params = self._params()
        x = [p.detach().clone() for p in params]
        g = [p.grad.detach().clone() for p in params]
        if self.prev is not None:
            s = [a - b for a, b in zip(x, self.prev[0], strict=True)]
            y = [a - b for a, b in zip(g, self.prev[1], strict=True)]
            sy = self._dot(s, y)
            if sy > 1e-12 * self._dot(y, y) ** 0.5 * self._dot(s, s) ** 0.5:
                self.pairs = (self.pairs + [(s, y, 1.0 / sy)])[-self.memory:]
        self.prev = (x, g)
        d = self._direction(g)
        slope = self._dot(g, d)
        if slope >= 0:                       # not a descent direction: fall back to -g
            d, slope, self.pairs = [-t for t in g], -self._dot(g, g), []
        alpha = self.param_groups[0]["lr"]
        for k in range(self.max_ls + 1):
            for p, xi, di in zip(params, x, d, strict=True):
                p.copy_(xi + alpha * di)
            new = closure()
            self.last_alpha, self.last_evals = alpha, k + 1
            if new <= loss + self.c1 * alpha * slope:
                return new
            alpha *= 0.5
        return new                            # accept the smallest step tried

    def state_dict(self) -> dict:
        """torch's layout: per parameter index ``prev_x``, ``prev_g``, ``s_k``, ``y_k``; and
        ``scalars`` of the whole optimizer (``n_pairs``, ``has_prev``, ``rho_k``)."""
        sd = super().state_dict()
        n = len(self._params())
        state: dict[int, dict] = {i: {} for i in range(n)}
        if self.prev is not None:
            for i in range(n):
                state[i]["prev_x"], state[i]["prev_g"] = self.prev[0][i], self.prev[1][i]
        scalars = {"n_pairs": len(self.pairs), "has_prev": int(self.prev is not None)}
        for k, (s, y, rho) in enumerate(self.pairs):
            for i in range(n):
                state[i][f"s_{k}"], state[i][f"y_{k}"] = s[i], y[i]
            scalars[f"rho_{k}"] = rho
        sd["state"], sd["scalars"] = state, scalars
        return sd

    def load_state_dict(self, sd: dict) -> None:
        sc, st, n = sd.get("scalars", {}), sd["state"], len(self._params())

        def column(name: str) -> list[torch.Tensor]:
            return [st[i][name] for i in range(n)]
        self.prev = (column("prev_x"), column("prev_g")) if sc.get("has_prev") else None
        self.pairs = [(column(f"s_{k}"), column(f"y_{k}"), sc[f"rho_{k}"])
                      for k in range(int(sc.get("n_pairs", 0)))]
        for group, saved in zip(self.param_groups, sd["param_groups"], strict=True):
            group["lr"] = saved["lr"]


def make_optimizer(params: list[torch.Tensor], t: TrainConfig, dot: Callable,
                   lr: float | None = None):
    """``train.optimizer`` over ``params`` at learning rate ``lr`` (None: ``train.lr``)."""
    lr = t.lr if lr is None else lr
    if t.optimizer == "sgd":
        return SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return Adam(params, lr=lr, weight_decay=t.weight_decay)
    return LBFGS(params, lr, t.lbfgs_memory, t.lbfgs_max_ls, dot)


def make_schedule(opt: torch.optim.Optimizer, t: TrainConfig):
    if t.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, t.milestones, gamma=t.factor)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, t.steps))
    return None


def optimizer_state(opt, params: list[torch.Tensor]) -> tuple[dict[str, list], dict[str, float]]:
    """(per-parameter tensors by name, aligned with ``params``; scalars) from the optimizer's
    ``state_dict()``: any torch optimizer, and L-BFGS (whose pair count and rho_k are
    scalars of the whole optimizer)."""
    sd = opt.state_dict()
    state = [sd["state"].get(i, {}) for i in range(len(params))]
    tensors, scalars = {}, {}
    for key, value in state[0].items() if state else ():
        if torch.is_tensor(value) and value.shape == params[0].shape:
            tensors[key] = [s[key] for s in state]
        elif value is not None:
            scalars[key] = float(value)
    scalars.update(sd.get("scalars", {}))
    return tensors, scalars


def load_optimizer_state(opt, params: list[torch.Tensor], tensors: dict[str, list],
                         scalars: dict[str, float]) -> None:
    """The inverse of :func:`optimizer_state`, through ``opt.load_state_dict``."""
    sd = opt.state_dict()
    whole = "scalars" in sd                      # L-BFGS: scalars of the whole optimizer
    state = {}
    for i in range(len(params)):
        st = {k: v[i].clone() for k, v in tensors.items()}
        if not whole:         # e.g. Adam's step, kept as a float32 tensor by torch
            st.update({k: torch.tensor(v, dtype=torch.float32) for k, v in scalars.items()})
        if st:
            state[i] = st
    sd["state"] = state
    if whole:
        sd["scalars"] = dict(scalars)
    opt.load_state_dict(sd)


def set_state_scalars(opt, params: list[torch.Tensor], scalars: dict[str, float]) -> None:
    """Set per-parameter scalars (e.g. Adam's step) of every parameter's state."""
    sd = opt.state_dict()
    for i in range(len(params)):
        sd["state"].setdefault(i, {}).update(
            {k: torch.tensor(v, dtype=torch.float32) for k, v in scalars.items()})
    opt.load_state_dict(sd)
