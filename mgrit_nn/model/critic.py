"""Local critic networks (Lee, Hsieh, Lee): small classifiers on a layer group's output.

A critic maps the state after layer group i to class scores:
``[conv3x3 + ReLU] -> [adaptive average pooling] -> flatten -> [dense + ReLU] -> dense``
(``critic.kind``, ``critic.pool``, ``critic.hidden``; config section ``critic``).
Its weights are drawn, like the main network's, from a generator seeded by
(``model.seed``, critic index), in float64 on the CPU, then cast.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from mgrit_nn.model.init import Shapes, generator

if TYPE_CHECKING:
    from mgrit_nn.methods.registry import CriticConfig

CODE = 1 << 31          # generator codes of critics; the main network uses 0, 1, 2 + layer


def build_critic(c: CriticConfig, s: Shapes, seed: int, index: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> nn.Sequential:
    """Critic ``index`` (the layer group it follows) for states of shape ``s.state``."""
    n_classes = s.classifier[0][0]
    shape = s.state
    mods: list[nn.Module] = []
    if c.kind == "conv":
        mods += [nn.Conv2d(shape[0], c.channels, 3, padding=1, dtype=torch.float64), nn.ReLU()]
        shape = (c.channels,) + tuple(shape[1:])
    if c.pool > 0:
        mods.append(nn.AdaptiveAvgPool2d(c.pool))
        shape = (shape[0], c.pool, c.pool)
    mods.append(nn.Flatten())
    d = math.prod(shape)
    if c.hidden > 0:
        mods += [nn.Linear(d, c.hidden, dtype=torch.float64), nn.ReLU()]
        d = c.hidden
    mods.append(nn.Linear(d, n_classes, dtype=torch.float64))
    critic = nn.Sequential(*mods)
    g = generator(seed, CODE + index)
    with torch.no_grad():
        for m in critic:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                bound = 1.0 / math.sqrt(math.prod(m.weight.shape[1:]))   # 1 / sqrt(fan_in)
                for p in (m.weight, m.bias):
                    p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1)
                            * bound)
    return critic.to(device=device, dtype=dtype)


def n_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
