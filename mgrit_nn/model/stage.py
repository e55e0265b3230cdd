"""This rank's layers as one stage of a pipeline, for the stage-parallel methods.

``penalty``/``al``, ``parpas`` and ``local_critic`` do not solve for all states at once:
each rank runs its own steps forward from an input state it holds (the data on the
first rank), with autograd, and exchanges only the states at its two interfaces.
A :class:`Stage` wraps a :class:`~mgrit_nn.model.parallel.ParallelResNet` (the same
layer partition, parameters and checkpoint layout as every other method) and adds:

- ``forward(u_in)``: the rank's steps in sequence, differentiable in the input and
  in the rank's weights (the opening layer first on the first rank);
- ``send_right`` / ``recv_left`` and ``send_left`` / ``recv_right``: buffer-based,
  non-blocking messages of interface-sized tensors between neighbouring stages.

Stage ``k`` runs the steps into its points ``lo_k .. hi_k``; its input is the state at
point ``lo_k - 1``, the last point of stage ``k - 1`` (on the first rank: the data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mgrit_nn.comm import Tag
from mgrit_nn.model.regularization import regularization


def open_state(net, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The state u_0 from inputs ``x`` through an opening layer (W, b) of ``net``'s kind."""
    op = net.shapes.op
    return net.scheme.embed(op, net.act(op.opening(x, W, b)))


def run_steps(net, u: torch.Tensor, K: torch.Tensor, b: torch.Tensor, h: float,
              keep: bool = False):
    """``len(K)`` differentiable steps of ``net``'s scheme with spacing ``h`` from ``u``: the
    end state, or with ``keep`` every state from ``u`` on (the stages, the coarse network)."""
    op, act, scheme = net.shapes.op, net.act, net.scheme
    out = [u] if keep else None
    for j in range(len(K)):
        u = scheme.step(op, act, u.unsqueeze(0), K[j:j + 1], b[j:j + 1], h)[0]
        if keep:
            out.append(u)
    return out if keep else u


@dataclass
class LocalStep:
    """What :meth:`Stage.local_step` leaves: the stage's end state and local objective."""

    X: torch.Tensor                     # end state (with autograd history)
    objective: torch.Tensor             # the local objective (unscaled)
    logits: torch.Tensor | None         # the classifier's output on the last stage
    input_grad: torch.Tensor | None     # d objective / d input (stages after the first)
    reg: float = 0.0                    # the reg.* terms' value (global)
    sends: list = field(default_factory=list)   # posted messages, to complete


Objective = Callable[[torch.Tensor], torch.Tensor]


class Stage:
    def __init__(self, net) -> None:
        self.net, self.msg = net, net.msg
        chain = net.chain
        pos = chain.position(self.msg.rank)
        self.k, self.K = pos, len(chain.ranks)
        self.left = chain.ranks[pos - 1] if pos > 0 else None
        self.right = chain.ranks[pos + 1] if pos + 1 < self.K else None
        self.first, self.last = net.first, net.last

    def from_last(self, value: float) -> float:
        """A number only the last stage has (its loss), the same on every rank."""
        buf = torch.tensor([value if self.last else 0.0], dtype=torch.float64)
        return float(self.msg.bcast_tensor(buf, root=self.net.chain.ranks[-1])[0])

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch,) + self.net.shapes.state

    def forward(self, inp: torch.Tensor, states: bool = False):
        """The end state of this stage from ``inp`` (the batch ``x`` on the first rank,
        else the state at point ``lo - 1``); with ``states``, every state after each step."""
        net = self.net
        u = net.opening(inp) if self.first else inp
        return run_steps(net, u, net.weight, net.bias, net.h, keep=states)

    def local_step(self, inp: torch.Tensor, y: torch.Tensor, objective: Objective,
                   scale: float = 1.0, perturb: Callable | None = None) -> LocalStep:
        """The stage-parallel methods' common step: forward from ``inp`` with autograd (the
        steps see ``perturb(inp)`` if given), send the end state right, the local objective
        (the classifier's cross-entropy on the last stage, else ``objective(X)``), and the
        gradients: ``.grad`` of this rank's weights = scale * (d objective + d reg.*)."""
        net = self.net
        params = net.local_parameters()
        with torch.enable_grad():
            if not self.first:
                inp = inp.requires_grad_()
            X = self.forward(perturb(inp) if perturb is not None else inp)
            out = LocalStep(X, None, None, None, sends=[self.send_right(X.detach())])
            if self.last:
                out.logits = net.classifier(X)
                out.objective = torch.nn.functional.cross_entropy(out.logits, y)
            else:
                out.objective = objective(X)
            wrt = params + ([] if self.first else [inp])
            grads = torch.autograd.grad(out.objective, wrt, allow_unused=True,
                                        materialize_grads=True)
        pgrads = [g * scale for g in grads[:len(params)]]
        if net.reg is not None:          # the reg.* terms belong to the weights' own stages
            out.reg, rgrads = regularization(net, net.reg)
            pgrads = [g + scale * r for g, r in zip(pgrads, rgrads, strict=True)]
        for p, g in zip(params, pgrads, strict=True):
            p.grad = g.detach()
        out.input_grad = None if self.first else grads[-1]
        return out

    def logits(self, u_end: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(u_end)

    # -- interface messages --------------------------------------------------------------
    def send_right(self, u: torch.Tensor):
        return None if self.right is None else self.msg.isend(u, self.right, Tag.STAGE_RIGHT)

    def recv_left(self, out: torch.Tensor):
        return None if self.left is None else self.msg.irecv(out, self.left, Tag.STAGE_RIGHT)

    def send_left(self, v: torch.Tensor):
        return None if self.left is None else self.msg.isend(v, self.left, Tag.STAGE_LEFT)

    def recv_right(self, out: torch.Tensor):
        return None if self.right is None else self.msg.irecv(out, self.right, Tag.STAGE_LEFT)
