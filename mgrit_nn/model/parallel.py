"""The layer-parallel ODE-ResNet: each rank holds its layers; MGRIT propagates.

Rank p owns fine points ``[lo_p, hi_p]`` and the steps into them
(``theta_{i-1}`` for its points ``i >= 1``), stacked into one weight tensor;
the first rank also holds the opening layer, the last the classifier
(design §3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mgrit_nn.comm import Messenger
from mgrit_nn.config import ModelConfig
from mgrit_nn.mgrit import MGRIT, Chain, Level, MGRITOptions, Selection, SolveResult
from mgrit_nn.model.init import Shapes, init_classifier, init_layers, init_opening
from mgrit_nn.model.steps import ACTIVATIONS, euler_step

TAG_LAYERS = 64


class LayerExchange:
    """Fetches the weights of remote layers that coarse-level steps need.

    The pattern (who needs which layers from whom) is fixed per hierarchy and
    agreed once; each exchange then moves one flat buffer per rank pair.
    """

    def __init__(self, net: ParallelResNet, needed: list[int]) -> None:
        self.net = net
        owners: dict[int, list[int]] = {}
        for j in needed:
            owners.setdefault(net.chain.owner(j + 1), []).append(j)
        self.recv_from = owners
        comm = net.msg.comm
        wanted = comm.alltoall([owners.get(r, []) for r in range(comm.Get_size())])
        self.send_to = {r: js for r, js in enumerate(wanted) if js}
        self.rows = {j: k for k, j in enumerate(j for js in owners.values() for j in js)}

    def exchange(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked (K, b) of the needed layers, rows in the order of ``self.rows``."""
        net, msg = self.net, self.net.msg
        K, b = net.weight.detach(), net.bias.detach()
        wshape, bshape = net.shapes.layer
        wn, bn = math.prod(wshape), math.prod(bshape)
        recvs = []
        for r, js in self.recv_from.items():
            buf = torch.empty((len(js), wn + bn), dtype=net.dtype, device=net.device)
            recvs.append((buf, msg.irecv(buf, r, TAG_LAYERS)))
        sends = []
        for r, js in self.send_to.items():
            rows = torch.tensor([j - net.jlo for j in js], device=net.device)
            flat = torch.cat([K.index_select(0, rows).flatten(1),
                              b.index_select(0, rows).flatten(1)], 1)
            sends.append(msg.isend(flat, r, TAG_LAYERS))
        bufs = [rq.wait() for _, rq in recvs]
        for s in sends:
            s.wait()
        if not bufs:
            return K.new_zeros((0,) + wshape), b.new_zeros((0,) + bshape)
        flat = torch.cat(bufs)
        return flat[:, :wn].reshape((-1,) + wshape), flat[:, wn:].reshape((-1,) + bshape)


class ForwardPropagator:
    """Euler steps of the network on every level, batched over selections."""

    def __init__(self, net: ParallelResNet) -> None:
        self.net = net
        self.rows: list[torch.Tensor] = []      # per level: slot -> row of the weight table
        self.exchange: LayerExchange | None = None
        self.levels: list[Level] | None = None
        self._cache: dict = {}

    def _plan(self, levels: list[Level]) -> None:
        net = self.net
        self.levels = levels
        needed = sorted({(I - 1) * lev.stride for lev in levels for I in lev.points()
                         if I >= 1 and not net.jlo <= (I - 1) * lev.stride <= net.jhi})
        self.exchange = LayerExchange(net, needed)
        n_own = net.jhi - net.jlo + 1
        self.rows = []
        for lev in levels:
            rows = [0] * (lev.n_local + 1)
            for I in lev.points():
                if I >= 1:
                    j = (I - 1) * lev.stride
                    own = net.jlo <= j <= net.jhi
                    rows[lev.slot(I)] = j - net.jlo if own else n_own + self.exchange.rows[j]
            self.rows.append(torch.tensor(rows, dtype=torch.long, device=net.device))

    def prepare(self, levels: list[Level]) -> None:
        if levels is not self.levels:
            self._plan(levels)
        K_remote, b_remote = self.exchange.exchange()
        self.K = torch.cat([self.net.weight.detach(), K_remote])
        self.b = torch.cat([self.net.bias.detach(), b_remote])
        self._cache = {}

    def step(self, level: int, sel: Selection, u: torch.Tensor) -> torch.Tensor:
        Kb = self._cache.get(sel.key)
        if Kb is None:
            rows = self.rows[level].index_select(0, sel.slots)
            Kb = self._cache[sel.key] = (self.K.index_select(0, rows),
                                         self.b.index_select(0, rows))
        net = self.net
        H = net.h * self.levels[level].stride
        return euler_step(net.shapes.kind, net.act, u, Kb[0], Kb[1], H)


class ParallelResNet(nn.Module):
    """This rank's part of the network, and the MGRIT forward solve over all ranks."""

    def __init__(self, m: ModelConfig, s: Shapes, opts: MGRITOptions, msg: Messenger,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.cfg, self.shapes, self.msg = m, s, msg
        self.device, self.dtype = device, dtype
        self.h, self.act = m.T / m.layers, ACTIVATIONS[m.activation]
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
        self.prop = ForwardPropagator(self)
        self.solver = MGRIT(self.chain, self.prop, msg, opts, device, dtype, "MGRIT forward")

    def opening(self, x: torch.Tensor) -> torch.Tensor:
        if self.shapes.kind == "dense":
            return self.act(F.linear(x.flatten(1), self.open_weight, self.open_bias))
        return self.act(F.conv2d(x, self.open_weight, self.open_bias, padding=1))

    def classifier(self, uN: torch.Tensor) -> torch.Tensor:
        return F.linear(uN.flatten(1), self.cls_weight, self.cls_bias)

    def solve_forward(self, x: torch.Tensor, warm: torch.Tensor | None = None,
                      **kw) -> SolveResult:
        """MGRIT forward propagation of the batch ``x`` (every rank passes the same batch)."""
        with torch.no_grad():
            u0 = self.opening(x) if self.first else None
            shape = (x.shape[0],) + self.shapes.state
            return self.solver.solve(u0, shape, warm=warm, **kw)

    def final_state(self) -> torch.Tensor:
        """u_N (valid on the last rank)."""
        return self.solver.u[-1]

    def loss(self, y: torch.Tensor) -> tuple[float, torch.Tensor | None]:
        """Cross-entropy of the current u_N, the same value on every rank."""
        buf = torch.zeros(1, dtype=torch.float64)
        logits = None
        if self.last:
            with torch.no_grad():
                logits = self.classifier(self.final_state())
                buf[0] = F.cross_entropy(logits, y).item()
        self.msg.bcast_tensor(buf, root=self.chain.ranks[-1])
        return float(buf[0]), logits
