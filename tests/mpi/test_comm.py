"""Messages: reductions that steer decisions give the same bits on every rank; posted
sends deliver what was posted."""

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


def test_posted_sends_deliver_the_posted_values_in_order():
    """``post`` sends a copy: the sender may overwrite its tensor at once, reuse the tag
    before the receiver has taken the first message (large messages: MPI's rendezvous),
    and the receiver still gets every value, in order."""
    msg = Messenger(WORLD)
    rank, size = WORLD.Get_rank(), WORLD.Get_size()
    n, count = 1 << 15, 4                       # 256 KiB float64: over every eager limit
    if rank + 1 < size:
        t = torch.empty(n, dtype=torch.float64)
        for k in range(count):
            t.fill_(rank * 100 + k)
            msg.post(t, rank + 1, tag=11)
            t.fill_(-1.0)                       # the posted copy must not see this
    got = []
    if rank > 0:
        for _ in range(count):
            out = torch.empty(n, dtype=torch.float64)
            msg.irecv(out, rank - 1, tag=11).wait()
            got.append(out)
    msg.flush()
    for k, out in enumerate(got):
        assert torch.equal(out, torch.full((n,), float((rank - 1) * 100 + k),
                                           dtype=torch.float64))
    assert len(got) == (count if rank > 0 else 0)
