"""Message latency and bandwidth between two neighbouring ranks (the bench's ping-pong).

Rank 0 and rank 1 of the layer-parallel communicator send a tensor back and forth through
the same ``Messenger`` the solvers use (so a GPU run pays the same staging), for a few
message sizes including the size of one state message of the run; the other ranks wait.
One-way time = median round trip / 2. ``latency_s`` is the one-way time of the smallest
message, ``bandwidth_Bps`` the slope between the smallest and the largest: the two
numbers of the linear message model t(bytes) = latency + bytes / bandwidth.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from mgrit_nn.comm import Messenger, Tag

SIZES = (8, 1024, 65536, 1 << 20)      # bytes; the run's own state message is added


def state_bytes(shapes, batch: int, dtype: torch.dtype) -> int:
    """Bytes of one state message of ``batch`` samples (a level's ghost point)."""
    return batch * math.prod(shapes.state) * torch.empty((), dtype=dtype).element_size()


def pingpong(msg: Messenger, device: torch.device, state_bytes: int,
             repeats: int = 30) -> dict | None:
    """Rank 0's measured one-way times (rank 1 answers); None on other ranks and on one."""
    if msg.size < 2 or msg.rank > 1:
        return None
    sizes = sorted(set(SIZES) | {int(state_bytes)})
    one_way = []
    for nbytes in sizes:
        buf = torch.zeros(max(nbytes // 8, 1), dtype=torch.float64, device=device)
        times = []
        for k in range(repeats + 3):              # 3 untimed round trips first
            t0 = time.perf_counter()
            if msg.rank == 0:
                msg.isend(buf, 1, Tag.PINGPONG).wait()
                msg.irecv(buf, 1, Tag.PINGPONG).wait()
            else:
                msg.irecv(buf, 0, Tag.PINGPONG).wait()
                msg.isend(buf, 0, Tag.PINGPONG).wait()
            if k >= 3:
                times.append((time.perf_counter() - t0) / 2)
        one_way.append(statistics.median(times))
    if msg.rank == 1:
        return None
    slope = (one_way[-1] - one_way[0]) / (sizes[-1] - sizes[0])
    return {"bytes": sizes, "one_way_s": one_way, "latency_s": one_way[0],
            "bandwidth_Bps": 1.0 / slope if slope > 0 else float("inf")}
