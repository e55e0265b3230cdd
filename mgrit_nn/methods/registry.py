"""Every training method, one entry each: name, class, config section, constraints.

Adding a method is one module in ``mgrit_nn/methods/`` (a :class:`~mgrit_nn.methods.base.
Method`) plus one :class:`MethodSpec` here, with its config section's dataclass if it has
one (docs/architecture.md shows a worked example). This module imports no torch:
``train.method``'s choices, the ``Config`` sections and the config validation read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mgrit_nn.schema import opt

Check = tuple[bool, str, str]          # (ok, config key, message if not ok)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    target: str                         # "module:Class", imported only when the method runs
    doc: str                            # one line for docs/config.md
    section: str | None = None          # the config section the method owns (its bounds)
    schema: type | None = None          # that section's dataclass (joins the Config)
    one_rank: bool = False              # runs on exactly one rank
    line_search: str | None = None      # None: lbfgs works; else why it does not
    replicas: str | None = None         # None: data replicas work; else the message
    checks: Callable[..., list[Check]] | None = None   # (cfg, ranks) -> cross-field checks

    def build(self, run):
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)(run)

    def validate(self, cfg, ranks: int) -> list[Check]:
        t, D = cfg.train, cfg.parallel.data_replicas
        out: list[Check] = []
        if self.one_rank:
            out.append((ranks == 1, "train.method",
                        f"{self.name} is the one-rank reference; run it with 1 rank "
                        f"(got {ranks})"))
        if self.line_search is not None:
            out.append((t.optimizer != "lbfgs", "train.optimizer", self.line_search))
        if self.replicas is not None:
            out.append((D == 1, "parallel.data_replicas", self.replicas.format(D=D)))
        return out + (self.checks(cfg, ranks) if self.checks else [])


# -- the methods' own config sections ---------------------------------------------------
@dataclass
class PenaltyConfig:
    """``train.method: penalty | al`` (Sun et al., Algorithm 1; docs/training.md)."""

    beta: float = opt(1.0, "penalty coefficient beta of the first phase", gt=0)
    beta_rise: float = opt(10.0, "beta is multiplied by this at every beta milestone", gt=0)
    beta_milestones: list[int] = opt([], "steps after which beta is multiplied by beta_rise",
                                     ge=0)
    tol: float | list[float] = opt(0.0, "tau_j: correct lambda while its mean squared violation "
                                   "exceeds tau_j; one value or one per beta phase", ge=0)
    inner_max: int = opt(1, "cap on the lambda (and kappa) corrections per step", ge=1)
    lr_lambda: float = opt(0.1, "step size of the lambda correction (per-sample gradient)", ge=0)
    lr_kappa: float = opt(1.0, "al: multiplier step, times the classical 2 beta / n_state", ge=0)
    noise: float = opt(0.0, "std of Gaussian noise added to lambda_{K-1} in the last stage",
                       ge=0)
    honest_every: int = opt(1, "serial forward pass for the logged loss every this many steps "
                            "(0: never; loss is then the last stage's local loss)", ge=0)
    init: Literal["random", "shallow"] = opt(
        "random", "initial weights: random (model.seed) or shallow (Sun et al., Algorithm 1 "
        "step [2]: a shallow network of every shallow_every-th layer, trained for "
        "shallow_steps, its blocks replicated into the deep network)")
    shallow_every: int = opt(0, "init: shallow: fine layers per shallow block (its step: "
                             "shallow_every * h); 0: the layers of one stage, L/K (the paper's n)",
                             ge=0)
    shallow_steps: int = opt(100, "init: shallow: training steps of the shallow network "
                             "(train.optimizer, batches of data.batch_size)", ge=0)
    shallow_lr: float | None = opt(None, "init: shallow: its learning rate (null: train.lr)",
                                   gt=0)
    lambda_init: Literal["forward", "shallow"] = opt(
        "forward", "lambda_k at the start: forward (one exact pass of the initial deep network: "
        "a feasible start) or shallow (the shallow network's state at interface k; init: shallow)")
    literal: list[Literal["scaling", "explicit", "loop", "kappa", "last", "schedule"]] = opt(
        [], "departures from the paper's literal rules to undo (ablation; docs/training.md): "
        "scaling (# = B*n in the lambda step), explicit (no 1/(1+eta c)), loop (no forced first "
        "correction), kappa (eq. 23: lr_kappa * #/(2 beta)), last (Algorithm 1's last line), "
        "schedule (lambda and kappa steps scaled with train.schedule, as the weights' lr)")
    store: Literal["memory", "mmap"] = opt("memory", "lambda/kappa storage: memory or "
                                           "memory-mapped .npy files (data sets beyond RAM)")
    store_dir: str | None = opt(None, "mmap: directory of the per-rank files (default: temp)")


@dataclass
class CriticConfig:
    """The local critic networks c_i of ``train.method: local_critic`` (one per layer group
    except the last): [conv3x3 + ReLU] -> [average pooling] -> [dense + ReLU] -> class scores."""

    kind: Literal["dense", "conv"] = opt("dense", "dense: pooling + dense layers only; "
                                         "conv: a 3x3 convolution + ReLU first (conv networks)")
    channels: int = opt(8, "conv critic: output channels of its 3x3 convolution", ge=1)
    pool: int = opt(0, "conv states: adaptive average pooling to pool x pool first (0: none)",
                    ge=0)
    hidden: int = opt(32, "width of the hidden dense layer (ReLU); 0: one linear layer", ge=0)
    lr: float = opt(0.001, "Adam learning rate of the critics (the paper uses 1e-4)", gt=0)


@dataclass
class ParpasConfig:
    """``train.method: parpas`` (Parpas & Muir, Algorithm 4; docs/training.md)."""

    coarsen: int = opt(2, "global prediction: the coarse network keeps every coarsen-th layer "
                       "(step coarsen*h); model.layers must be a multiple", ge=2)
    coarse_iters: int = opt(100, "global prediction: serial training iterations of the coarse "
                            "network; 0: the single-level variant (no prediction phase)", ge=0)
    coarse_lr: float | None = opt(None, "learning rate of the coarse training (null: train.lr)",
                                gt=0)
    lr: float | None = opt(None, "learning rate of the local corrections (null: train.lr, "
                           "which serial training of the same config keeps)", gt=0)
    ridge: float = opt(1e-6, "regression: ridge weight on A, per observed pair (fit: "
                       "(G/n + ridge I) [A B]^T = X^T P / n)", ge=0)
    window: int = opt(0, "regression: fit on the pairs of the last this many observations "
                      "(coarse iterations and steps); 0: all pairs so far", ge=0)
    per_class: bool = opt(True, "regression: one fit (A, B) per class label of the samples "
                          "(the co-state depends on the label); false: one fit for all")
    exact_loss: bool = opt(True, "log the loss of an exact forward sweep of the full network "
                           "(one serial sweep per step); false: the last sub-system's loss")



@dataclass
class OneshotConfig:
    """``train.method: oneshot``: iteration counts that adapt to the gradient's error
    (issue 16; docs/training.md)."""

    check_every: int = opt(0, "every this many steps also take the exact gradient (MGRIT to "
                           "mgrit.tol) of the batch, step along it, and raise train.fwd_iters "
                           "and adj_iters by one if the one-shot gradient's relative error "
                           "exceeds max_error; 0: fixed counts", ge=0)
    max_error: float = opt(0.5, "relative error ||g - g*|| / ||g*|| of the one-shot gradient "
                           "that raises the counts (below 1, -g is a descent direction)", gt=0)
    min_error: float = opt(0.05, "below this error both counts go down by one again, to no "
                           "fewer than train.fwd_iters/adj_iters; 0: they only rise", ge=0)


@dataclass
class ClipConfig:
    """``train.method: clipped`` (the worked example of docs/architecture.md)."""

    max_norm: float = opt(1.0, "largest gradient norm: longer gradients are scaled down to it",
                          gt=0)


# -- their cross-field checks -----------------------------------------------------------
def writable(folder: str | None) -> bool:
    """Whether the mmap store can put its files in ``folder`` (created if need be)."""
    import tempfile
    from pathlib import Path

    try:
        d = Path(folder or tempfile.gettempdir())
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d):
            return True
    except OSError:
        return False


def _penalty_checks(cfg, ranks: int) -> list[Check]:
    pe = cfg.penalty
    taus = pe.tol if isinstance(pe.tol, list) else [pe.tol]
    L, every = cfg.model.layers, pe.shallow_every or cfg.model.layers // max(ranks, 1)
    shallow = pe.init == "shallow"
    return [(len(taus) >= 1, "penalty.tol", "an empty list: give one value or one per beta "
             "phase"),
            (not shallow or (every >= 1 and L % every == 0), "penalty.shallow_every",
             f"model.layers = {L} is not a multiple of the shallow block length {every} "
             f"(shallow_every 0: layers / ranks = {L}/{ranks}): the shallow network needs whole "
             "blocks"),
            (shallow or pe.lambda_init == "forward", "penalty.lambda_init",
             "lambda_init: shallow needs init: shallow (there is no shallow network otherwise)"),
            (pe.store != "mmap" or writable(pe.store_dir), "penalty.store_dir",
             f"{pe.store_dir or 'the temp folder'}: cannot create or write files there (the "
             "mmap store of lambda/kappa)")]


def _critic_checks(cfg, ranks: int) -> list[Check]:
    c, m = cfg.critic, cfg.model
    return [(c.kind != "conv" or m.kind == "conv", "critic.kind",
             "a conv critic needs a conv network (model.kind: conv)"),
            (c.pool == 0 or m.kind == "conv", "critic.pool",
             "pooling needs a conv network (model.kind: conv); use 0")]


def _parpas_checks(cfg, ranks: int) -> list[Check]:
    pp, m = cfg.parpas, cfg.model
    return [(pp.coarse_iters == 0 or m.layers % pp.coarsen == 0, "parpas.coarsen",
             f"model.layers = {m.layers} is not a multiple of {pp.coarsen}: the coarse network "
             "needs whole groups of layers (or parpas.coarse_iters: 0)")]


_LP = "mgrit_nn.methods.layer_parallel:LayerParallelMethod"
_PENALTY = "mgrit_nn.methods.penalty:PenaltyMethod"
_STAGES = "{m} updates every stage on its own loss; use sgd or adam"

METHODS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("serial", "mgrit_nn.methods.serial:SerialMethod", "1 rank, autograd",
               one_rank=True),
    MethodSpec("mgrit", _LP, "exact: forward and adjoint MGRIT to tolerance"),
    MethodSpec("oneshot", _LP, "inexact, warm-started: train.fwd_iters + adj_iters iterations",
               section="oneshot", schema=OneshotConfig),
    MethodSpec("local_critic", "mgrit_nn.methods.local_critic:LocalCriticMethod",
               "Lee, Hsieh, Lee", section="critic", schema=CriticConfig,
               line_search="local_critic updates each layer group from its own loss; lbfgs (a "
               "line search on the global loss) does not apply: use adam or sgd",
               replicas="local_critic runs one replica, got {D}", checks=_critic_checks),
    MethodSpec("penalty", _PENALTY, "stage-parallel, Sun et al.",
               section="penalty", schema=PenaltyConfig,
               line_search=_STAGES.format(m="penalty"),
               replicas="penalty supports one replica only (got {D})", checks=_penalty_checks),
    MethodSpec("al", _PENALTY, "augmented Lagrangian, Sun et al.",
               section="penalty", schema=PenaltyConfig,
               line_search=_STAGES.format(m="al"),
               replicas="al supports one replica only (got {D})", checks=_penalty_checks),
    MethodSpec("parpas", "mgrit_nn.methods.parpas:ParpasMethod", "Parpas & Muir",
               section="parpas", schema=ParpasConfig,
               line_search="parpas updates every sub-system from its own (regressed) co-state; "
               "lbfgs (a line search on the global loss) does not apply: use adam or sgd",
               replicas="parpas runs one replica, got {D}", checks=_parpas_checks),
    MethodSpec("clipped", "mgrit_nn.methods.clipped:ClippedMethod",
               "exact MGRIT gradient, clipped to clip.max_norm", section="clip",
               schema=ClipConfig),
)}

METHOD_SECTIONS: dict[str, type] = {s.section: s.schema for s in METHODS.values() if s.section}
SECTIONS_OF_METHODS = set(METHOD_SECTIONS)


def method_doc() -> str:
    return " | ".join(f"{s.name} ({s.doc})" for s in METHODS.values())
