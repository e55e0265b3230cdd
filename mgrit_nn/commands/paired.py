"""``bench.pairs``: the gradients a ratio compares, timed alternately, round by round.

The bench's medians time each gradient in a block of its own repetitions, so a slow spell
of the machine (the project's 2-core machines swing up to 2x within minutes) falls on one
side of a ratio only. Here every round times, back to back, one serial autograd gradient
(rank 0 alone, the fastest serial variant the bench found), one one-shot gradient on all
ranks of the layer-parallel group and, on P > 1 ranks, one one-shot gradient of the whole
network on rank 0 alone (the P = 1 run of the same network), each timed call right after an
untimed one of the same gradient (the first call after another gradient pays for the caches
and memory the other left: measured, it made serial autograd at batch 256 twice as slow);
the ratios are taken within each round, and their quartiles reported.

The ranks that do not take part in a single-rank timing wait in a sleeping barrier, as in
the bench's serial timing, so the working rank has the machine as in a one-rank run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch
from mpi4py import MPI

from mgrit_nn.comm import Messenger
from mgrit_nn.methods.base import Batch
from mgrit_nn.methods.layer_parallel import LayerParallelMethod
from mgrit_nn.runtime import idle_barrier
from mgrit_nn.setup_run import Run


def one_rank_run(run: Run) -> Run:
    """The same run on this rank alone: the whole network on one rank."""
    me = MPI.COMM_SELF
    return dataclasses.replace(run, msg=Messenger(me, run.msg.cuda_aware),
                               data_msg=Messenger(me, run.msg.cuda_aware), world=me)


def seconds(fn, device: torch.device, warm: bool = False) -> float:
    """The wall time of ``fn()``, the device's queued work included; ``warm``: of a second
    call right after an untimed first."""
    if warm:
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def quartiles(values: list[float]) -> list[float]:
    """[first quartile, median, third quartile] (the median alone of fewer than 2 values)."""
    if len(values) < 2:
        return [values[0]] * 3
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [q1, q2, q3]


def _flat_grad(method: LayerParallelMethod) -> torch.Tensor | None:
    """The gradient the method's last step left, in global order, on the group's rank 0."""
    return method.gather_flat(method.local_flat([p.grad for p in method.parameters()]))


def paired(run: Run, serial, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict:
    """``bench.pairs`` rounds (module docstring); ``serial``: a closure for one serial
    gradient, called on world rank 0 only. The returned dict is valid on world rank 0."""
    world, comm, device = run.world, run.msg.comm, run.device
    P, root = comm.Get_size(), world.Get_rank() == 0
    batch = Batch(x, y, idx)
    many = LayerParallelMethod(run, exact=False, fixed_iters=True)
    one = LayerParallelMethod(one_rank_run(run), exact=False, fixed_iters=True) \
        if P > 1 and root else None
    diff = None

    def alone(fn) -> float | None:          # on world rank 0, the others asleep
        t = seconds(fn, device, warm=True) if root else None
        idle_barrier(world)
        return t

    def together() -> float:                # on the group, after an untimed gradient
        many.step(batch)
        comm.Barrier()
        return comm.allreduce(seconds(lambda: many.step(batch), device), op=MPI.MAX)
    together()                                          # allocates the storage
    if P > 1:
        alone(lambda: one.step(batch))
        ref = _flat_grad(many)
        if root:                                        # the same network and gradient
            diff = float((ref - _flat_grad(one)).abs().max())
    alone(serial)
    rounds = []
    for _ in range(run.cfg.bench.pairs):
        s = alone(serial)
        t = together()
        o = alone(lambda: one.step(batch)) if P > 1 else None
        rounds.append((s, t, o))
    if not root:
        return {}
    out = {"rounds": len(rounds),
           "serial_s": statistics.median(r[0] for r in rounds),
           "oneshot_s": statistics.median(r[1] for r in rounds),
           "ratio_oneshot": quartiles([t / s for s, t, _ in rounds]),
           "oneshot_one_rank_s": None, "efficiency": None, "one_rank_grad_diff": diff}
    if P > 1:
        out["oneshot_one_rank_s"] = statistics.median(r[2] for r in rounds)
        out["efficiency"] = quartiles([o / (P * t) for _, t, o in rounds])
    return out
