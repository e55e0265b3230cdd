"""The weights a rank's steps need on every level: its own layers plus fetched remote ones.

Coarse-level steps (forward: layer (I-1) M_l; adjoint: layer N - I M_l) and the
time-smoothness regularization use layers held by other ranks. The pattern of who
needs which layer from whom is agreed once; each exchange then moves one flat
buffer per rank pair.
"""

from __future__ import annotations

import math

import torch

from mgrit_nn.comm import Tag
from mgrit_nn.mgrit import Level
from mgrit_nn.mgrit.propagator import Index


class LayerExchange:
    """Fetches the weights of remote layers that coarse-level steps need.

    The pattern (who needs which layers from whom) is fixed per hierarchy and
    agreed once; each exchange then moves one flat buffer per rank pair.
    """

    def __init__(self, net, needed: list[int]) -> None:
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
            recvs.append((buf, msg.irecv(buf, r, Tag.LAYERS)))
        sends = []
        for r, js in self.send_to.items():
            rows = torch.tensor([j - net.jlo for j in js], device=net.device)
            flat = torch.cat([K.index_select(0, rows).flatten(1),
                              b.index_select(0, rows).flatten(1)], 1)
            sends.append(msg.isend(flat, r, Tag.LAYERS))
        bufs = [rq.wait() for _, rq in recvs]
        for s in sends:
            s.wait()
        if not bufs:
            return K.new_zeros((0,) + wshape), b.new_zeros((0,) + bshape)
        flat = torch.cat(bufs)
        return flat[:, :wn].reshape((-1,) + wshape), flat[:, wn:].reshape((-1,) + bshape)


class LayerTable:
    """The weights this rank's steps use on every level: its own rows, then fetched ones.

    ``layer_of(level, I)`` names the global layer whose weights the step into
    level point ``I`` uses. Rows per level are planned once per hierarchy; each
    ``refresh`` moves the current weights of the remote rows (one message per
    rank pair).
    """

    def __init__(self, net, levels: list[Level], layer_of) -> None:
        self.net, self.levels = net, levels
        own = range(net.jlo, net.jhi + 1)
        layers = [[layer_of(lev, I) if I >= 1 else None for I in lev.points()] for lev in levels]
        needed = sorted({j for js in layers for j in js if j is not None and j not in own})
        self.exchange = LayerExchange(net, needed)
        self.rows = []
        for js in layers:
            rows = [0] + [0 if j is None else (j - net.jlo if j in own else
                          len(own) + self.exchange.rows[j]) for j in js]
            self.rows.append(torch.tensor(rows, dtype=torch.long, device=net.device))
        self.level_K: list[torch.Tensor] = []
        self.level_b: list[torch.Tensor] = []
        self.level_Kt: list[torch.Tensor] = []     # K^T of every row, with both_layouts
        self.generation = 0

    def refresh(self) -> None:
        """The current weights, and per level the weights of its slots in slot order (one
        gather per level and refresh, so a selection's weights are a view of them)."""
        K_remote, b_remote = self.exchange.exchange()
        self.K = torch.cat([self.net.weight.detach(), K_remote])
        self.b = torch.cat([self.net.bias.detach(), b_remote])
        # row 0 also stands for "no step" (point 0): a rank without layers has no row 0
        K, b = (self.K, self.b) if len(self.K) else (self.K.new_zeros((1,) + self.K.shape[1:]),
                                                     self.b.new_zeros((1,) + self.b.shape[1:]))
        # into the same tensors at every refresh while the weights keep their dtype and
        # device, so a propagator's per-selection views of them stay valid across solves;
        # ``generation`` counts the (re)allocations (a propagator drops its views on a change)
        both = self.net.shapes.op.both_layouts
        if not self.level_K or self.level_K[0].dtype != K.dtype or \
                self.level_K[0].device != K.device:
            self.level_K = [K.index_select(0, rows) for rows in self.rows]
            self.level_b = [b.index_select(0, rows) for rows in self.rows]
            self.level_Kt = [lK.transpose(1, 2).contiguous() for lK in self.level_K] \
                if both else []
            self.generation += 1
            return
        for rows, lK, lb in zip(self.rows, self.level_K, self.level_b, strict=True):
            torch.index_select(K, 0, rows, out=lK)
            torch.index_select(b, 0, rows, out=lb)
        for lK, lKt in zip(self.level_K, self.level_Kt, strict=False):
            lKt.copy_(lK.transpose(1, 2))

    def gather(self, level: int, slots: Index) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights of the steps into these slots: views when the slots are regular
        (then valid until ``generation`` changes), else copies (valid until the next
        refresh)."""
        return slots.get(self.level_K[level]), slots.get(self.level_b[level])

    def gather_hot(self, level: int, slots: Index):
        """``gather``'s weights as the no-grad steps take them (``Operator.hot_weights``)."""
        K, b = self.gather(level, slots)
        Kt = slots.get(self.level_Kt[level]) if self.level_Kt else None
        return self.net.shapes.op.hot_weights(K, Kt), b
