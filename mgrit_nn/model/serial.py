"""Serial reference network: plain PyTorch modules, one process, autograd.

The tests compare every layer-parallel result with this network. It shares
only the initialization with the layer-parallel code, not the step code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mgrit_nn.config import ModelConfig, RegConfig
from mgrit_nn.model.init import Shapes, init_classifier, init_layer, init_opening
from mgrit_nn.model.steps import ACTIVATIONS


def _set(module: nn.Module, w: torch.Tensor, b: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(b)
    return module


class SerialResNet(nn.Module):
    """``model.step: euler`` or ``verlet``, written out layer by layer with nn.Linear/Conv2d."""

    def __init__(self, m: ModelConfig, s: Shapes, dtype=torch.float64, device="cpu") -> None:
        super().__init__()
        self.op, self.h, self.act = s.op, m.T / m.layers, ACTIVATIONS[m.activation]
        self.verlet = m.step == "verlet"
        block = self.op.module
        self.opening = _set(block(s.opening[0]), *init_opening(m, s))
        self.layers = nn.ModuleList(
            _set(block(s.layer[0]), *init_layer(m, s, j)) for j in range(m.layers))
        cw = s.classifier[0]
        self.classifier = _set(nn.Linear(cw[1], cw[0], dtype=torch.float64),
                               *init_classifier(m, s))
        self.to(dtype=dtype, device=device)   # weights drawn in float64, then cast

    def states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """u_0 .. u_N (verlet: y and z stacked as in the layer-parallel network)."""
        u = self.act(self.opening(self.op.module_input(x)))
        return self.steps(self.op.join(u, torch.zeros_like(u)) if self.verlet else u)

    def steps(self, u: torch.Tensor, start: int = 0) -> list[torch.Tensor]:
        """u_start .. u_N from the state ``u`` at point ``start``. Verlet:
        z_{i+1} = z_i - h sigma(K_i^T y_i + b_i),  y_{i+1} = y_i + h sigma(K_i z_{i+1} + b_i)."""
        out = [u]                              # verlet: dense (B, 2, w); conv (B, 2c, H, W)
        if self.verlet:
            y, z = self.op.halves(u)
        for layer in self.layers[start:]:
            if self.verlet:
                kty = self.op.module_transpose_bias(y, layer.weight, layer.bias)
                z = z - self.h * self.act(kty)
                y = y + self.h * self.act(layer(z))
                u = self.op.join(y, z)
            else:
                u = u + self.h * self.act(layer(u))
            out.append(u)
        return out

    def head(self, uN: torch.Tensor) -> torch.Tensor:
        """Logits of the final states u_N (verlet: the classifier sees y_N)."""
        if self.verlet:
            uN = self.op.halves(uN)[0]
        return self.classifier(uN.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.states(x)[-1])

    def regularization(self, reg: RegConfig) -> torch.Tensor:
        """The ``reg.*`` Tikhonov terms, written out layer by layer."""
        total = torch.zeros((), dtype=self.classifier.weight.dtype)
        for j, layer in enumerate(self.layers):
            total = total + reg.theta * self.h / 2 * _norm2(layer)
            if j > 0:
                prev = self.layers[j - 1]
                dw, db = layer.weight - prev.weight, layer.bias - prev.bias
                total = total + reg.ddt / (2 * self.h) * ((dw**2).sum() + (db**2).sum())
        return total + reg.opening / 2 * _norm2(self.opening) \
            + reg.classifier / 2 * _norm2(self.classifier)

    def loss(self, x: torch.Tensor, y: torch.Tensor, reg: RegConfig) -> torch.Tensor:
        return F.cross_entropy(self(x), y) + self.regularization(reg)


def _norm2(module: nn.Module) -> torch.Tensor:
    return (module.weight ** 2).sum() + (module.bias ** 2).sum()
