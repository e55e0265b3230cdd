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

import torch

from mgrit_nn.comm import Tag


class Stage:
    def __init__(self, net) -> None:
        self.net, self.msg = net, net.msg
        chain = net.chain
        pos = chain.position(self.msg.rank)
        self.k, self.K = pos, len(chain.ranks)
        self.left = chain.ranks[pos - 1] if pos > 0 else None
        self.right = chain.ranks[pos + 1] if pos + 1 < self.K else None
        self.first, self.last = net.first, net.last
        self.n_steps = net.jhi - net.jlo + 1

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch,) + self.net.shapes.state

    def forward(self, inp: torch.Tensor, states: bool = False):
        """The end state of this stage from ``inp`` (the batch ``x`` on the first rank,
        else the state at point ``lo - 1``); with ``states``, every state after each step."""
        net = self.net
        u = net.opening(inp) if self.first else inp
        out = [u] if states else None
        for j in range(self.n_steps):
            u = net.scheme.step(net.shapes.op, net.act, u.unsqueeze(0), net.weight[j:j + 1],
                                net.bias[j:j + 1], net.h)[0]
            if states:
                out.append(u)
        return out if states else u

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
