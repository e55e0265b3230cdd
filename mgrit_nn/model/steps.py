"""Residual steps of the ODE-ResNet (design §2), batched over stacked layers.

``u`` has a leading "layer" dimension n: ``u[k]`` is stepped with weights
``K[k], b[k]``. One call applies n independent steps as one tensor operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import vmap


class Activation:
    """sigma, its in-place form (for steps that need no autograd) and its derivative."""

    def __init__(self, fn, fn_, deriv) -> None:
        self.fn, self.fn_, self.deriv = fn, fn_, deriv

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)


def _dtanh(z: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(z)
    return t.mul_(t).neg_().add_(1.0)


ACTIVATIONS = {
    "tanh": Activation(torch.tanh, torch.tanh_, _dtanh),
    "relu": Activation(torch.relu, torch.relu_, lambda z: (z > 0).to(z.dtype)),
    "softplus": Activation(F.softplus, F.softplus, torch.sigmoid),
}


def _conv(u: torch.Tensor, K: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(u, K, b, padding=1)


def _conv_t(v: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    return F.conv_transpose2d(v, K, padding=1)


_batched_conv = vmap(_conv)
_batched_conv_t = vmap(_conv_t)


def linear_part(kind: str, u: torch.Tensor, K: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``K_k u_k + b_k`` for every k: dense (n,B,w)x(n,w,w) or 3x3 conv (n,B,c,H,W)."""
    if kind == "dense":
        return torch.baddbmm(b.unsqueeze(1), u, K.transpose(1, 2))
    return _batched_conv(u, K, b)


def linear_transpose(kind: str, v: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``K_k^T v_k`` for every k (the adjoint of the linear part without its bias)."""
    if kind == "dense":
        return torch.bmm(v, K)
    return _batched_conv_t(v, K)


def euler_step(kind: str, act, u: torch.Tensor, K: torch.Tensor, b: torch.Tensor,
               h: float) -> torch.Tensor:
    """``u + h * sigma(K u + b)`` for a stack of layers (differentiable)."""
    return u + h * act(linear_part(kind, u, K, b))


def euler_step_(kind: str, act: Activation, u: torch.Tensor, K: torch.Tensor,
                b: torch.Tensor, h: float) -> torch.Tensor:
    """The same without autograd, one new tensor instead of three (the MGRIT hot path)."""
    z = act.fn_(linear_part(kind, u, K, b))
    return z.mul_(h).add_(u)


def euler_adjoint(kind: str, lam: torch.Tensor, D: torch.Tensor, K: torch.Tensor,
                  h: float) -> torch.Tensor:
    """``(dPhi/du)^T lam = lam + h K^T (sigma'(z) * lam)``, given ``D = sigma'(z)``."""
    w = linear_transpose(kind, D * lam, K)
    return w.mul_(h).add_(lam)
