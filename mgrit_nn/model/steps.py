"""Residual steps of the ODE-ResNet (design §2), batched over stacked layers.

``u`` has a leading "layer" dimension n: ``u[k]`` is stepped with weights
``K[k], b[k]``. One call applies n independent steps as one tensor operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import vmap

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "softplus": F.softplus}


def _conv(u: torch.Tensor, K: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(u, K, b, padding=1)


_batched_conv = vmap(_conv)


def linear_part(kind: str, u: torch.Tensor, K: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``K_k u_k + b_k`` for every k: dense (n,B,w)x(n,w,w) or 3x3 conv (n,B,c,H,W)."""
    if kind == "dense":
        return torch.baddbmm(b.unsqueeze(1), u, K.transpose(1, 2))
    return _batched_conv(u, K, b)


def euler_step(kind: str, act, u: torch.Tensor, K: torch.Tensor, b: torch.Tensor,
               h: float) -> torch.Tensor:
    """``u + h * sigma(K u + b)`` for a stack of layers."""
    return u + h * act(linear_part(kind, u, K, b))
