"""Layer-parallel backpropagation: the adjoint MGRIT solve and the gradients (design §5).

The adjoint runs the same MGRIT core on the reversed grid ``tau = N - i`` with
the chain of ranks reversed, so every point stays on its forward owner. Its
step into tau-point ``I`` of level ``l`` is the vector-Jacobian product of the
coarse forward step from fine point ``i = N - I M_l`` (weights of layer ``i``,
spacing ``H_l``), linearized at the fine-grid primal state ``u_i``:

    lam_i = (dPhi/du (u_i; theta_i))^T lam_{i + M_l}

Parameter gradients are taken once, on level 0, after the last adjoint
iteration: ``grad theta_j = (dPhi/dtheta (u_j; theta_j))^T lam_{j+1}``.
"""

from __future__ import annotations

import torch

from mgrit_nn.mgrit import MGRIT, Chain, Level, MGRITOptions, Selection, SolveResult
from mgrit_nn.model.layers import LayerTable


class AdjointPropagator:
    """Transposed linearized steps of the network's scheme.

    ``prepare`` linearizes once per solve: for every level, one batched evaluation of the
    scheme's linearization ``D`` at the primal states of all local steps with that level's
    spacing (Euler: ``D = sigma'(K u + b)``, a step is then ``lam + H K^T (D * lam)``;
    Verlet: both half-steps' ``sigma'``). No autograd and no forward recomputation per step.
    """

    def __init__(self, net) -> None:
        self.net = net
        self.table: LayerTable | None = None
        self._cache: dict = {}

    def prepare(self, levels: list[Level]) -> None:
        net = self.net
        if self.table is None or self.table.levels is not levels:
            N = net.cfg.layers
            self.table = LayerTable(net, levels, lambda lev, I: N - I * lev.stride)
            # primal state of the step into tau-point I: forward point N - I M_l (local)
            self.state_slot = [
                torch.tensor([0] + [N - I * lev.stride - net.lo + 1 if I >= 1 else 0
                                    for I in lev.points()], dtype=torch.long, device=net.device)
                for lev in levels]
        self.table.refresh()
        primal = net.solver.data[0].u           # forward level-0 storage (slot = i - lo + 1)
        self.D = []
        for l, lev in enumerate(levels):
            slots = torch.arange(lev.n_local + 1, device=net.device)
            K, b = self.table.gather(l, slots)
            u = primal.index_select(0, self.state_slot[l])
            self.D.append(net.scheme.linearize(net.shapes.kind, net.act, u, K, b,
                                               net.h * lev.stride))
        self._cache = {}

    def step(self, level: int, sel: Selection, lam: torch.Tensor) -> torch.Tensor:
        K = self._cache.get(sel.key)
        if K is None:
            K = self._cache[sel.key] = self.table.gather(level, sel.slots)[0]
        H = self.net.h * self.table.levels[level].stride
        return self.net.scheme.adjoint(self.net.shapes.kind, lam,
                                       self.D[level].index_select(0, sel.slots), K, H)


def adjoint_solver(net, opts: MGRITOptions) -> MGRIT:
    chain = Chain.block(net.cfg.layers, net.msg.size, reverse=True)
    return MGRIT(chain, AdjointPropagator(net), net.msg, opts, net.device, net.dtype,
                 "MGRIT adjoint")


def solve_adjoint(net, lam_N: torch.Tensor | None, warm: torch.Tensor | None = None,
                  **kw) -> SolveResult:
    """Solve for lam_0..lam_N from ``lam_N`` (given on the last forward rank)."""
    shape = net.solver.shape
    with torch.no_grad():
        return net.adjoint.solve(lam_N, shape, warm=warm, **kw)


def layer_gradients(net) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of this rank's stacked layer weights from the final adjoint (one sweep)."""
    net.solver.refresh_ghost(0)       # collective with the neighbours: u_{lo-1} (layer lo-1)
    if net.jhi < net.jlo:             # a rank owning only point 0 holds no layer
        return torch.zeros_like(net.weight), torch.zeros_like(net.bias)
    u = net.solver.data[0].u[net.jlo - net.lo + 1: net.jhi - net.lo + 2]
    # lam_{j+1} for j = jlo..jhi sits at tau = N-j-1, adjoint slot tau - (N-hi) + 1 = hi - j:
    # slots hi-jhi (= 1) .. hi-jlo, in reverse order of j
    lam = net.adjoint.data[0].u[1:net.hi - net.jlo + 1].flip(0)
    K, b = net.weight.detach(), net.bias.detach()
    return net.scheme.param_grad(net.shapes.kind, net.act, u, lam, K, b, net.h)
