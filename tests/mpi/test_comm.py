"""Reductions that steer decisions must give the same bits on every rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import WORLD

from mgrit_nn.comm import Messenger

pytestmark = pytest.mark.mpi


def test_scalar_and_tensor_sums_are_identical_on_every_rank():
    msg = Messenger(WORLD)
    rng = np.random.default_rng(WORLD.Get_rank())
    s = msg.allreduce_sum(float(rng.standard_normal() * 1e3 + 1e-7))
    t = msg.allreduce_tensor(torch.from_numpy(rng.standard_normal(1000) * 1e3))
    everyone = WORLD.allgather((s, t.numpy().tobytes()))
    assert all(e == everyone[0] for e in everyone)
    values = WORLD.allgather(float(np.random.default_rng(WORLD.Get_rank()).standard_normal()
                                   * 1e3 + 1e-7))
    assert s == sum(values)                       # rank order, the documented definition
