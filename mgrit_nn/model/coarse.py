"""The coarse network: every ``coarsen``-th layer of the network with step ``coarsen * h``,
serial and differentiable (parpas' global prediction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mgrit_nn.model.layout import ParamLayout
from mgrit_nn.model.stage import open_state, run_steps


class CoarseNetwork:
    """The prediction phase's network: N/coarsen steps of size coarsen*h, serial, autograd."""

    def __init__(self, net, full: torch.Tensor, coarsen: int) -> None:
        named = ParamLayout(net.shapes, net.cfg.layers).named(full)
        self.net, self.H = net, net.h * coarsen
        n_coarse = net.cfg.layers // coarsen

        def leaf(t):
            return t.detach().clone().to(net.device, net.dtype).requires_grad_()
        self.open_w, self.open_b = leaf(named["opening/weight"]), leaf(named["opening/bias"])
        self.cls_w = leaf(named["classifier/weight"])
        self.cls_b = leaf(named["classifier/bias"])
        # injection: coarse layer J starts from fine layer J * coarsen
        self.K = leaf(torch.stack([named[f"layers/{J * coarsen:05d}/weight"]
                                   for J in range(n_coarse)]))
        self.b = leaf(torch.stack([named[f"layers/{J * coarsen:05d}/bias"]
                                   for J in range(n_coarse)]))

    def parameters(self) -> list[torch.Tensor]:
        return [self.open_w, self.open_b, self.K, self.b, self.cls_w, self.cls_b]

    def states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """u_0 .. u_{N/coarsen}: the fine network's opening and steps, spacing coarsen*h."""
        u0 = open_state(self.net, x, self.open_w, self.open_b)
        return run_steps(self.net, u0, self.K, self.b, self.H, keep=True)

    def logits(self, uN: torch.Tensor) -> torch.Tensor:
        uN = self.net.scheme.readout(self.net.shapes.op, uN)
        return F.linear(uN.flatten(1), self.cls_w, self.cls_b)


def at_point(states: list[torch.Tensor], s: int, coarsen: int) -> torch.Tensor:
    """The trajectory at fine point ``s``, linear in time between coarse points."""
    q, r = divmod(s, coarsen)
    if r == 0:
        return states[q]
    f = r / coarsen
    return (1 - f) * states[q] + f * states[q + 1]
