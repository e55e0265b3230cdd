"""The layer-parallel ODE-ResNet: each rank holds its layers; MGRIT propagates.

Rank p owns fine points ``[lo_p, hi_p]`` and the steps into them
(``theta_{i-1}`` for its points ``i >= 1``), stacked into one weight tensor;
the first rank also holds the opening layer, the last the classifier
(design §3).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from mgrit_nn.comm import Messenger
from mgrit_nn.config import MgritConfig, ModelConfig, RegConfig
from mgrit_nn.mgrit import MGRIT, Chain, Level, Selection, SolveResult, Warm, Workspace
from mgrit_nn.model.adjoint import adjoint_solver, layer_gradients, solve_adjoint
from mgrit_nn.model.init import Shapes, init_classifier, init_layers, init_opening
from mgrit_nn.model.layers import LayerTable
from mgrit_nn.model.operators import Operator
from mgrit_nn.model.regularization import neighbour_layers, regularization
from mgrit_nn.model.stage import open_state
from mgrit_nn.model.steps import ACTIVATIONS, SCHEMES


class ForwardPropagator:
    """The network's steps (its ``model.step`` scheme) on every level, batched over selections.

    The step into level point ``I`` uses the weights of fine layer ``(I-1) M_l``
    (injection) and the spacing ``H_l = h M_l`` (design §4).
    """

    def __init__(self, net: ParallelResNet, compile_step: bool = False) -> None:
        self.net = net
        self.table: LayerTable | None = None
        self._cache: dict = {}
        self.work = net.scratch     # the step's scratch, reused across steps and solves
        self._compiled = compiled_step(net.scheme, net.shapes.op, net.act) \
            if compile_step else None

    def prepare(self, levels: list[Level]) -> None:
        if self.table is None or self.table.levels is not levels:
            self.table = LayerTable(self.net, levels, lambda lev, I: (I - 1) * lev.stride)
        gen = self.table.generation
        self.table.refresh()
        if self.table.generation != gen:
            self._cache = {}          # the weights' views change only with the table's buffers

    def capture_key(self) -> tuple:
        """The steps read the table's per-level weights, replaced only with a new generation."""
        return (id(self.table), None if self.table is None else self.table.generation)

    def step(self, level: int, sel: Selection, u: torch.Tensor, out: torch.Tensor) -> None:
        Kb = self._cache.get(sel.key)
        if Kb is None:
            gather = self.table.gather if self._compiled is not None else self.table.gather_hot
            Kb = gather(level, sel.slots)
            if sel.slots.sl is not None:         # views: kept; irregular slots: copies,
                self._cache[sel.key] = Kb        # gathered anew at every step
        net = self.net
        H = net.h * self.table.levels[level].stride
        if self._compiled is not None:
            self._compiled(u, Kb[0], Kb[1], H, out)
        else:
            net.scheme.step_(net.shapes.op, net.act, u, Kb[0], Kb[1], H, out, self.work)


def compiled_step(scheme, op: Operator, act):
    """``out <- Phi(u)`` as one ``torch.compile``d function (``runtime.compile``): the
    scheme's functional step, so inductor fuses bias, activation and update and writes the
    result straight into the (strided) level storage. Only the stacked-steps dimension is
    dynamic (one graph serves every selection size); each level's spacing and each batch
    size get their own graph."""
    def into(u, K, b, h, out):
        out.copy_(scheme.step(op, act, u, K, b, h))
    fn = torch.compile(into, dynamic=False)

    def call(u, K, b, h, out):
        for t in (u, K, b, out):
            torch._dynamo.mark_dynamic(t, 0)
        fn(u, K, b, h, out)
    return call


class ParallelResNet(nn.Module):
    """This rank's part of the network, and the MGRIT forward solve over all ranks."""

    def __init__(self, m: ModelConfig, s: Shapes, opts: MgritConfig, msg: Messenger,
                 device: torch.device, dtype: torch.dtype,
                 adj_opts: MgritConfig | None = None, reg: RegConfig | None = None,
                 compile_step: bool = False, graphs: str = "eager") -> None:
        super().__init__()
        self.cfg, self.shapes, self.msg = m, s, msg
        self.reg = reg if reg is not None and any(dataclasses.astuple(reg)) else None
        self.device, self.dtype = device, dtype
        self.h, self.act = m.T / m.layers, ACTIVATIONS[m.activation]
        self.scheme = SCHEMES[m.step]
        self.chain = Chain.block(m.layers, msg.size)
        lo, hi = self.chain.local_range(msg.rank)
        self.lo, self.hi = lo, hi
        self.jlo, self.jhi = max(lo, 1) - 1, hi - 1        # global layers held here
        self.first, self.last = msg.rank == self.chain.ranks[0], msg.rank == self.chain.ranks[-1]

        def param(t):
            return nn.Parameter(t.to(device=device, dtype=dtype))
        K, b = init_layers(m, s, range(self.jlo, self.jhi + 1))
        self.weight, self.bias = param(K), param(b)
        if self.first:
            w, b0 = init_opening(m, s)
            self.open_weight, self.open_bias = param(w), param(b0)
        if self.last:
            w, b0 = init_classifier(m, s)
            self.cls_weight, self.cls_bias = param(w), param(b0)
        # the time-smoothness term couples neighbouring ranks' layers: agree on that once
        self.neighbour_layers = neighbour_layers(self) if self.reg and self.reg.ddt > 0 else None
        # the forward and the adjoint solve never run at the same time: one scratch serves
        # both solvers (coarse levels, evaluations) and both propagators (a step's rows)
        self.scratch = Workspace()
        self.prop = ForwardPropagator(self, compile_step)
        self.solver = MGRIT(self.chain, self.prop, msg, opts, device, dtype, "MGRIT forward",
                            self.scratch, graphs)
        self.adjoint = adjoint_solver(self, adj_opts or opts, graphs)
        self.fwd_result: SolveResult | None = None
        self.adj_result: SolveResult | None = None

    def local_parameters(self) -> list[nn.Parameter]:
        """This rank's parameters in a fixed order: layers, then opening / classifier."""
        ps = [self.weight, self.bias]
        if self.first:
            ps += [self.open_weight, self.open_bias]
        if self.last:
            ps += [self.cls_weight, self.cls_bias]
        return ps

    def flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """This rank's share, in global order, of a vector laid out like the parameters:
        opening (weight, bias), then per layer j (K_j, b_j), then classifier (weight, bias).
        ``tensors`` are ordered like :meth:`local_parameters`."""
        K, b, *rest = tensors
        parts = [torch.cat([K.flatten(1), b.flatten(1)], 1).flatten()]
        if self.first:
            parts = [rest[0].flatten(), rest[1].flatten()] + parts
            rest = rest[2:]
        if self.last:
            parts += [rest[0].flatten(), rest[1].flatten()]
        return torch.cat(parts)

    def unflat(self, share: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`flat`: this rank's share -> tensors shaped like local_parameters."""
        s, n = self.shapes, self.jhi - self.jlo + 1
        sizes = [math.prod(t) for t in (*s.opening, *s.layer, *s.classifier)]
        parts, at = [], 0

        def take(k: int) -> torch.Tensor:
            nonlocal at
            at += k
            return share[at - k:at]
        if self.first:
            opening = [take(sizes[0]).view(s.opening[0]), take(sizes[1]).view(s.opening[1])]
        rows = take(n * (sizes[2] + sizes[3])).view(n, sizes[2] + sizes[3])
        parts = [rows[:, :sizes[2]].reshape((n,) + s.layer[0]),
                 rows[:, sizes[2]:].reshape((n,) + s.layer[1])]
        if self.first:
            parts += opening
        if self.last:
            parts += [take(sizes[4]).view(s.classifier[0]), take(sizes[5]).view(s.classifier[1])]
        return parts

    def gather_flat(self, local: torch.Tensor, root: int = 0) -> torch.Tensor | None:
        """Concatenate every rank's :meth:`flat` share on ``root`` (global order)."""
        comm = self.msg.comm
        send = local.detach().cpu().contiguous().numpy()
        counts = comm.gather(send.size, root=root)     # one int per rank, once per call
        if self.msg.rank != root:
            comm.Gatherv(send, None, root=root)
            return None
        out = torch.empty(sum(counts), dtype=local.dtype)
        comm.Gatherv(send, [out.numpy(), counts], root=root)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy over the batch, the same value on every rank.

        Forward runs the MGRIT forward solve; ``loss.backward()`` (on every rank)
        runs the adjoint MGRIT solve and sets ``.grad`` of this rank's parameters.
        """
        return MGRITLoss.apply(self, x, y, *self.local_parameters())

    def opening(self, x: torch.Tensor) -> torch.Tensor:
        """The state u_0 (for verlet: ``(sigma(W_in x + b_in), 0)``)."""
        return open_state(self, x, self.open_weight, self.open_bias)

    def classifier(self, uN: torch.Tensor) -> torch.Tensor:
        """Logits of the final states (for verlet: of their y part)."""
        uN = self.scheme.readout(self.shapes.op, uN)
        return F.linear(uN.flatten(1), self.cls_weight, self.cls_bias)

    def solve_forward(self, x: torch.Tensor, warm: Warm | None = None,
                      **kw) -> SolveResult:
        """MGRIT forward propagation of the batch ``x`` (every rank passes the same batch)."""
        with torch.no_grad():
            u0 = self.opening(x) if self.first else None
            shape = (x.shape[0],) + self.shapes.state
            self.fwd_result = self.solver.solve(u0, shape, warm=warm, **kw)
            return self.fwd_result

    def propagate(self, x: torch.Tensor) -> None:
        """Exact forward pass as one distributed sweep (for evaluation)."""
        with torch.no_grad():
            u0 = self.opening(x) if self.first else None
            self.solver.propagate(u0, (x.shape[0],) + self.shapes.state)

    def final_state(self) -> torch.Tensor:
        """u_N (valid on the last rank)."""
        return self.solver.u[-1]

    def loss(self, y: torch.Tensor, with_reg: bool = True) -> tuple[float, torch.Tensor | None]:
        """Cross-entropy of the current u_N plus (``with_reg``) the ``reg.*`` terms, the same
        on every rank; and the logits (last rank only)."""
        buf = torch.zeros(1, dtype=torch.float64)
        logits = None
        if self.last:
            with torch.no_grad():
                logits = self.classifier(self.final_state())
                buf[0] = F.cross_entropy(logits, y).item()
        self.msg.bcast_tensor(buf, root=self.chain.ranks[-1])
        if with_reg and self.reg is not None:
            buf[0] += regularization(self, self.reg)[0]
        return float(buf[0]), logits

    def backprop(self, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor | float = 1.0,
                 warm: Warm | None = None, **kw) -> list[torch.Tensor]:
        """Gradients of ``scale * loss`` for :meth:`local_parameters` (after solve_forward).

        lam_N from the classifier and loss on the last rank; the adjoint MGRIT
        solve on all ranks; layer gradients in one final level-0 sweep; the
        opening-layer gradient from lam_0 on the first rank.
        """
        lam_N, cls = None, []
        if self.last:
            uN = self.final_state().detach().requires_grad_()
            with torch.enable_grad():
                loss = F.cross_entropy(self.classifier(uN), y) * scale
                lam_N, *cls = torch.autograd.grad(loss, (uN, self.cls_weight, self.cls_bias))
        self.adj_result = solve_adjoint(self, lam_N, warm=warm, **kw)
        with self.adjoint.stats.phase("gradient"):
            grads = list(layer_gradients(self))
        if self.first:
            lam0 = self.adjoint.u[-1]
            with torch.enable_grad():
                u0 = self.opening(x)
                grads += list(torch.autograd.grad(u0, (self.open_weight, self.open_bias), lam0))
        grads += cls
        if self.reg is not None:
            grads = [g + scale * r for g, r in
                     zip(grads, regularization(self, self.reg)[1], strict=True)]
        return grads


class MGRITLoss(torch.autograd.Function):
    """Autograd boundary: forward = MGRIT forward solve, backward = adjoint MGRIT solve."""

    @staticmethod
    def forward(ctx, net: ParallelResNet, x: torch.Tensor, y: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        net.solve_forward(x)
        loss, _ = net.loss(y)
        ctx.net, ctx.x, ctx.y = net, x, y
        return torch.tensor(loss, dtype=net.dtype, device=net.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grads = ctx.net.backprop(ctx.x, ctx.y, scale=grad)
        return (None, None, None, *grads)
