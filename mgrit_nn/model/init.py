"""Parameter shapes and the rank-count independent initialization (design §2).

Every tensor comes from its own generator seeded by (model.seed, which tensor),
drawn in float64 on the CPU: the serial reference and every layer-parallel run
start from identical weights whatever the number of ranks or the dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mgrit_nn.config import ConfigError, ModelConfig
from mgrit_nn.model.steps import SCHEMES


@dataclass(frozen=True)
class Shapes:
    kind: str
    input_shape: tuple[int, ...]
    state: tuple[int, ...]            # one sample's state: (w,) or (c, H, W); verlet: (2, w)
    opening: tuple[tuple[int, ...], tuple[int, ...]]          # or (2c, H, W), y then z
    layer: tuple[tuple[int, ...], tuple[int, ...]]
    classifier: tuple[tuple[int, ...], tuple[int, ...]]
    step: str = "euler"               # model.step: the step scheme (model/steps.py SCHEMES)


def shapes(m: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> Shapes:
    scheme = SCHEMES[m.step]
    if m.kind == "dense":
        d_in = math.prod(input_shape)
        w = m.width
        return Shapes("dense", tuple(input_shape), scheme.state_shape("dense", (w,)),
                      ((w, d_in), (w,)), ((w, w), (w,)), ((n_classes, w), (n_classes,)), m.step)
    if len(input_shape) != 3:
        raise ConfigError(f"model.kind: conv needs an image data set (C, H, W inputs); "
                          f"this data set has inputs of shape {tuple(input_shape)}")
    c_in, H, W = input_shape
    c = m.channels
    return Shapes("conv", tuple(input_shape), scheme.state_shape("conv", (c, H, W)),
                  ((c, c_in, 3, 3), (c,)), ((c, c, 3, 3), (c,)),
                  ((n_classes, c * H * W), (n_classes,)), m.step)


def _draw(seed: int, code: int, wshape, bshape, std: float):
    g = torch.Generator().manual_seed((seed << 32) + code)
    fan_in = math.prod(wshape[1:])
    scale = std / math.sqrt(fan_in)
    w = torch.randn(wshape, generator=g, dtype=torch.float64) * scale
    b = torch.randn(bshape, generator=g, dtype=torch.float64) * scale
    return w, b


def init_opening(m: ModelConfig, s: Shapes):
    return _draw(m.seed, 0, *s.opening, std=1.0)


def init_classifier(m: ModelConfig, s: Shapes):
    return _draw(m.seed, 1, *s.classifier, std=1.0)


def init_layer(m: ModelConfig, s: Shapes, j: int):
    """Weights (K_j, b_j) of residual step j (0-based, global index)."""
    return _draw(m.seed, 2 + j, *s.layer, std=m.init_std)


def init_layers(m: ModelConfig, s: Shapes, js: range) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked (K, b) of the global layers ``js``."""
    if not len(js):
        return (torch.zeros((0,) + s.layer[0], dtype=torch.float64),
                torch.zeros((0,) + s.layer[1], dtype=torch.float64))
    ws, bs = zip(*(init_layer(m, s, j) for j in js), strict=True)
    return torch.stack(ws), torch.stack(bs)
