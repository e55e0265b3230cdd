"""The weight initialization: every model.seed gives its own weights, seed 0 those it always
gave, and no rank count or dtype changes them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mgrit_nn.config import ModelConfig
from mgrit_nn.methods.registry import CriticConfig
from mgrit_nn.model.critic import build_critic
from mgrit_nn.model.init import init_classifier, init_layer, init_opening, shapes

SEEDS = (0, 1, 7, -1, 2**31 + 5)     # seeds equal modulo 2^32 share their weights


def weights(seed: int) -> list[torch.Tensor]:
    m = ModelConfig(layers=4, width=3, seed=seed)
    s = shapes(m, (2,), 3)
    return [*init_opening(m, s), *init_classifier(m, s),
            *(t for j in range(4) for t in init_layer(m, s, j))]


@pytest.mark.parametrize("a,b", list(itertools.combinations(SEEDS, 2)))
def test_different_seeds_give_different_weights(a, b):
    for wa, wb in zip(weights(a), weights(b), strict=True):
        assert not torch.equal(wa, wb)


def test_every_tensor_of_one_seed_is_its_own():
    w = weights(3)
    for x, y in itertools.combinations(w[4:], 2):     # the layers' K and b
        assert x.shape != y.shape or not torch.equal(x, y)


def test_seed_zero_keeps_its_weights():
    """Seed 0 draws tensor ``code`` from the generator seeded with ``code`` (as it always
    did), so runs with the default seed are unchanged."""
    m = ModelConfig(layers=4, width=3, seed=0)
    s = shapes(m, (2,), 3)
    g = torch.Generator().manual_seed(2 + 3)               # layer 3
    K = torch.randn(s.layer[0], generator=g, dtype=torch.float64) * (1.0 / math.sqrt(3))
    assert torch.equal(init_layer(m, s, 3)[0], K)


def test_critics_follow_the_seed():
    s = shapes(ModelConfig(width=3), (2,), 3)
    a = build_critic(CriticConfig(), s, 0, 0, torch.float64)
    b = build_critic(CriticConfig(), s, 1, 0, torch.float64)
    c = build_critic(CriticConfig(), s, 0, 1, torch.float64)
    first = [next(m.parameters()) for m in (a, b, c)]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
