"""Tikhonov regularization of the layer-parallel network (``reg.*``), value and gradient.

Every term is a sum over parameters a rank holds, except the time-smoothness term
``gamma/(2h) sum_j |theta_j - theta_{j-1}|^2``, which couples the first and last
layer of a rank with the neighbouring ranks' layers (fetched once per evaluation).
"""

from __future__ import annotations

import torch

from mgrit_nn.config import RegConfig
from mgrit_nn.model.layers import LayerExchange


def neighbour_layers(net) -> LayerExchange:
    """The exchange of the layers just outside this rank's (collective: every rank calls it)."""
    wanted = [j for j in (net.jlo - 1, net.jhi + 1) if 0 <= j < net.cfg.layers]
    return LayerExchange(net, wanted if net.jhi >= net.jlo else [])


def _sq(*ts: torch.Tensor) -> torch.Tensor:
    return sum((t * t).sum() for t in ts)


def regularization(net, reg: RegConfig) -> tuple[float, list[torch.Tensor]]:
    """(global value, gradients of this rank's local_parameters); one reduction."""
    params = [p.detach().requires_grad_() for p in net.local_parameters()]
    K, b, *rest = params
    h = net.h
    with torch.enable_grad():
        own = reg.theta * h / 2 * _sq(K, b)
        grad_only = torch.zeros((), dtype=K.dtype, device=K.device)
        if reg.ddt > 0 and len(K):
            ex = net.neighbour_layers
            Kn, bn = ex.exchange()
            rows = ex.rows
            Ks, bs = [K], [b]
            if net.jlo - 1 in rows:
                r = rows[net.jlo - 1]
                Ks, bs = [Kn[r:r + 1]] + Ks, [bn[r:r + 1]] + bs
            Kx, bx = torch.cat(Ks), torch.cat(bs)
            own = own + reg.ddt / (2 * h) * _sq(Kx[1:] - Kx[:-1], bx[1:] - bx[:-1])
            if net.jhi + 1 in rows:   # the pair (jhi, jhi+1) is counted by the right rank
                r = rows[net.jhi + 1]
                grad_only = reg.ddt / (2 * h) * _sq(Kn[r] - K[-1], bn[r] - b[-1])
        if net.first:
            own = own + reg.opening / 2 * _sq(rest[0], rest[1])
            rest = rest[2:]
        if net.last:
            own = own + reg.classifier / 2 * _sq(rest[0], rest[1])
        if not own.requires_grad and not grad_only.requires_grad:
            grads = [torch.zeros_like(p) for p in params]
        else:
            grads = torch.autograd.grad(own + grad_only, params, allow_unused=True,
                                        materialize_grads=True)
    return net.msg.allreduce_sum(float(own.detach())), list(grads)
