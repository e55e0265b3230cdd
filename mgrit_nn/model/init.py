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
from mgrit_nn.model.operators import OPERATORS, Operator
from mgrit_nn.model.steps import SCHEMES


@dataclass(frozen=True)
class Shapes:
    kind: str
    input_shape: tuple[int, ...]
    state: tuple[int, ...]            # one sample's state: (w,) or (c, H, W); verlet: (2, w)
    opening: tuple[tuple[int, ...], tuple[int, ...]]          # or (2c, H, W), y then z
    layer: tuple[tuple[int, ...], tuple[int, ...]]
    classifier: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def op(self) -> Operator:
        """The linear part of a layer (``model.kind``): dense or 3x3 convolution."""
        return OPERATORS[self.kind]


def shapes(m: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> Shapes:
    op = OPERATORS[m.kind]
    try:
        base, opening, layer, classifier = op.shapes(m, tuple(input_shape), n_classes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Shapes(m.kind, tuple(input_shape), SCHEMES[m.step].state_shape(op, base), opening,
                  layer, classifier)


_MIX = 0x9E3779B1      # odd: seed -> code + seed * _MIX (mod 2^32) is one-to-one in the seed


def generator(seed: int, code: int) -> torch.Generator:
    """The generator of tensor ``code`` under ``model.seed``. torch's CPU generator keeps only
    the low 32 bits of its seed (``(seed << 32) + code``, used before, gave every seed the
    weights of seed 0), so the pair is folded into 32 bits: ``code + seed * _MIX mod 2^32``
    differs for every seed (modulo 2^32), and seed 0 keeps the generator of ``code`` it
    always had."""
    return torch.Generator().manual_seed((code + seed * _MIX) % 2**32)


def _draw(seed: int, code: int, wshape, bshape, std: float):
    g = generator(seed, code)
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
