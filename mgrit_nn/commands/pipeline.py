"""The pipeline-parallel baseline of the bench (issue 16, item 3): what users pick instead
of layer-parallel MGRIT.

The serial network's layers are cut into one contiguous stage per rank and trained by
``torch.distributed.pipelining`` (GPipe and 1F1B over micro-batches): the same network,
weights and batch as the bench's serial and one-shot gradients. ``torch.distributed`` is
initialized from the MPI ranks (rank, size, and rank 0's host and a free port broadcast
over MPI: no second launcher), with gloo on CPUs and NCCL on GPUs. Every micro-batch count
that divides the batch (1, 2, 4, ... up to ``bench.max_microbatches``; for 1F1B at least one
per stage) is timed; the best of each schedule is reported. Only the Euler step
(``model.step: euler``) is cut into stages; Verlet runs report none.
"""

from __future__ import annotations

import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from mpi4py import MPI
from torch import nn

from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.setup_run import Run


class _Stage(nn.Module):
    """Layers lo..hi-1 of a serial network, with its opening (first) / classifier (last)."""

    def __init__(self, net: SerialResNet, lo: int, hi: int, first: bool, last: bool) -> None:
        super().__init__()
        self.op, self.h, self.act = net.op, net.h, net.act
        self.opening = net.opening if first else None
        self.layers = nn.ModuleList(net.layers[lo:hi])
        self.classifier = net.classifier if last else None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.opening is not None:
            u = self.act(self.opening(self.op.module_input(u)))
        for layer in self.layers:
            u = u + self.h * self.act(layer(u))
        return self.classifier(u.flatten(1)) if self.classifier is not None else u


def _init(comm, device: torch.device) -> None:
    if comm.Get_rank() == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            addr = (socket.gethostname(), s.getsockname()[1])
    else:
        addr = None
    host, port = comm.bcast(addr, root=0)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            init_method=f"tcp://{host}:{port}", rank=comm.Get_rank(),
                            world_size=comm.Get_size())


def pipeline(run: Run, x: torch.Tensor, y: torch.Tensor) -> dict | None:
    """Times per schedule and micro-batch count on all ranks of the group (rank 0's dict;
    None elsewhere, with one rank and for Verlet)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from mgrit_nn.commands.bench import _median_time

    comm, P, r = run.msg.comm, run.msg.size, run.msg.rank
    if P < 2 or run.cfg.model.step != "euler" or dist.is_initialized():
        return None
    b, n = run.cfg.bench, x.shape[0]
    net = SerialResNet(run.cfg.model, run.shapes, run.dtype, run.device)
    bounds = np.linspace(0, run.cfg.model.layers, P + 1).round().astype(int)
    stage_net = _Stage(net, bounds[r], bounds[r + 1], r == 0, r == P - 1)
    net.zero_grad()                          # serial autograd's gradient, once: the reference
    F.cross_entropy(net(x), y).backward()
    reference = [q.grad.clone() for q in stage_net.parameters()]
    _init(comm, run.device)
    rows = []
    try:
        counts = [m for m in (2**k for k in range(12)) if m <= b.max_microbatches and n % m == 0]
        for m in counts:
            mb = n // m
            shape = (mb,) + (tuple(x.shape[1:]) if r == 0 else run.shapes.state)
            probe = torch.empty(shape, dtype=run.dtype, device=run.device)
            for name, kind in (("gpipe", ScheduleGPipe), ("1f1b", Schedule1F1B)):
                if name == "1f1b" and m < P:        # 1F1B needs a micro-batch per stage
                    continue
                stage = PipelineStage(stage_net, r, P, run.device, input_args=(probe,))
                sched = kind(stage, m, loss_fn=F.cross_entropy)

                def grad(sched=sched) -> None:
                    stage_net.zero_grad()
                    if r == 0:
                        sched.step(x)
                    elif r == P - 1:
                        sched.step(target=y)
                    else:
                        sched.step()
                seconds = _median_time(grad, b.repeats, b.warmup, run.device, comm)
                rows.append({"schedule": name, "microbatches": m, "seconds": seconds,
                             "grad_diff": _diff(stage_net, reference)})
    finally:
        dist.destroy_process_group()
    diff = comm.allreduce(max(row.pop("grad_diff") for row in rows), op=MPI.MAX)
    if r != 0:
        return None
    out = {"pipeline": rows, "pipeline_grad_diff": diff, "pipeline_bounds": bounds.tolist()}
    for name in ("gpipe", "1f1b"):
        best = min((row for row in rows if row["schedule"] == name), key=lambda q: q["seconds"])
        out[f"pipeline_{name}_s"] = best["seconds"]
        out[f"pipeline_{name}_microbatches"] = best["microbatches"]
    return out


def _diff(stage_net: nn.Module, reference: list[torch.Tensor]) -> float:
    """Largest difference of this stage's gradient (just computed by the schedule) from
    serial autograd's on the whole batch."""
    return max(float((q.grad - g).abs().max())
               for q, g in zip(stage_net.parameters(), reference, strict=True))
