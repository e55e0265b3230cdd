"""``mgrit-nn bench``: one gradient of serial autograd, one-shot and exact MGRIT, side by side.

All timings in one run, medians of ``bench.repeats`` after ``bench.warmup`` untimed
repetitions. Work is counted by the solvers (step applications on any level) and
reported in fine-sweep equivalents (steps / N, forward and adjoint separately), and in
tensor operations that run a kernel (``opcount``): serial autograd's, and the busiest
rank's for MGRIT (on one rank the whole gradient; on P ranks a lower bound of the critical
path, which also runs through the sequential coarsest-level solve). Memory: the most tensor
bytes a rank's first gradient holds at once (``livemem``: its solvers' storage, scratch,
warm-start stores and temporaries), also in the rank's level-0 state sets (rows 0..n_local
of the batch's states: ``*_state_sets``).

``span_speedup`` is a critical-path model in step applications (a forward step and
an adjoint step count one each): serial = 2N (forward + backward sweep); MGRIT =
the largest per-rank count of step applications of the forward and adjoint solves,
plus, for every sequential coarsest-level solve, the part of it done on other ranks
and one message hop per rank boundary, plus the final gradient sweep (N/P).
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys

import numpy as np
import torch
import torch.nn.functional as F
from mpi4py import MPI

from mgrit_nn.commands.paired import paired, seconds
from mgrit_nn.commands.pingpong import pingpong, state_bytes
from mgrit_nn.commands.pipeline import pipeline
from mgrit_nn.livemem import peak_live_bytes
from mgrit_nn.methods.base import Batch
from mgrit_nn.methods.layer_parallel import LayerParallelMethod
from mgrit_nn.mgrit.capture import new_graph, warm_up
from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.model.steps import tanh_via_sigmoid
from mgrit_nn.opcount import count_ops
from mgrit_nn.runtime import idle_barrier
from mgrit_nn.setup_run import Run


def _median_time(fn, repeats: int, warmup: int, device: torch.device, comm=None) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if comm is not None:
            comm.Barrier()
        dt = seconds(fn, device)
        if comm is not None:                       # the slowest rank defines the time
            dt = comm.allreduce(dt, op=MPI.MAX)
        times.append(dt)
    return statistics.median(times)


def _solver_counts(method: LayerParallelMethod) -> tuple[int, int, dict, int]:
    net = method.net
    fwd, adj = net.solver.stats, net.adjoint.stats
    phases = {f"fwd_{k}": v for k, v in fwd.seconds.items()}
    phases.update({f"adj_{k}": v for k, v in adj.seconds.items()})
    coarsest = net.solver.levels[-1]
    coarse = sum(1 for i in coarsest.points() if i >= 1)    # this rank's share of that sweep
    return fwd.steps, adj.steps, phases, coarse


def _one(method: LayerParallelMethod, x, y, idx, repeats: int, warmup: int, run: Run) -> dict:
    comm = run.msg.comm

    def grad() -> None:
        method.step(Batch(x, y, idx))
    peak = peak_live_bytes(grad)              # the first gradient allocates the storage
    # runtime.graphs: each kind of iteration runs eagerly once, is recorded the next time and
    # replayed from then on; the warm-started kinds appear from the second gradient on
    for _ in range(max(warmup, 3 if run.cfg.runtime.graphs != "eager" else 0) - 1):
        grad()
    net = method.net
    peaks = comm.allgather((peak, peak / net.solver.data[0].u.nbytes))
    for s in (net.solver.stats, net.adjoint.stats):
        s.reset()
    before = dict(run.msg.timers.seconds)
    seconds = _median_time(grad, repeats, 0, run.device, comm)
    fwd, adj, phases, coarse_local = _solver_counts(method)
    replays = (net.solver.stats.replays + net.adjoint.stats.replays) / repeats
    kernels = comm.allgather(count_ops(grad)["kernels"])   # one more gradient, untimed
    msg = {k: (v - before.get(k, 0.0)) / repeats for k, v in run.msg.timers.seconds.items()}
    phases = {k: v / repeats for k, v in phases.items()}
    phases.update(msg)
    N, P = run.cfg.model.layers, comm.Get_size()
    counts = np.array([fwd / repeats, adj / repeats, coarse_local], dtype=np.float64)
    allc = np.empty((P, 3))
    comm.Allgather(counts, allc)
    fwd_res, adj_res = net.fwd_result, net.adj_result
    # coarsest solves per iteration: one per V-cycle (F-cycles have more; V assumed here)
    solves = fwd_res.iters + adj_res.iters
    n_coarse = net.solver.levels[-1].n - 1
    span = allc[:, 0].max() + allc[:, 1].max() + solves * (
        n_coarse - allc[:, 2].max() + (P - 1)) + N / P
    return {"seconds": seconds, "levels": len(net.solver.levels),
            "fwd_sweeps": allc[:, 0].sum() / N, "adj_sweeps": allc[:, 1].sum() / N,
            "fwd_iters": fwd_res.iters, "adj_iters": adj_res.iters,
            "fwd_factor": fwd_res.conv_factor, "adj_factor": adj_res.conv_factor,
            "span": float(span), "phases": phases, "replays": replays,
            "iters": fwd_res.iters + adj_res.iters,
            "kernels": max(kernels), "kernels_total": sum(kernels),
            "peak_mb": max(p for p, _ in peaks) / 2**20,
            "state_sets": max(sets for _, sets in peaks)}


def bench_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch every timed gradient differentiates: the first data.batch_size training
    samples (all with full batch) and their indices."""
    n = run.cfg.data.batch_size or len(run.data.x_train)
    return (run.data.x_train[:n].to(run.device, run.dtype), run.data.y_train[:n].to(run.device),
            torch.arange(n))


def serial_gradient(run: Run, x: torch.Tensor, y: torch.Tensor):
    """The serial network and ``grad_of(forward)``: a closure for one gradient of the mean
    cross-entropy of ``forward(x)`` (the network itself, or it compiled)."""
    model = SerialResNet(run.cfg.model, run.shapes, run.dtype, run.device)

    def grad_of(forward):
        def grad() -> None:
            model.zero_grad()
            F.cross_entropy(forward(x), y).backward()
        return grad
    return model, grad_of


def graphed_serial(model: SerialResNet, grad, kind: str):
    """Serial autograd's whole gradient ``grad()`` (forward and backward; it sets the
    gradients to None first, so they are the recording's own memory) recorded once
    (``kind``: a CUDA graph, or its CPU emulation): a replay and the tensors it rewrites."""
    for _ in range(3):                       # libraries' lazy initialization (a side stream)
        warm_up(kind, grad)
    graph = new_graph(kind)
    graph.capture(grad)
    return graph.replay, [p.grad for p in model.parameters()]


def _serial(run: Run, x: torch.Tensor, y: torch.Tensor):
    """Serial autograd's gradient (rank 0): eager, and with bench.compile_serial the same
    network under torch.compile (the whole forward, static shapes; backward by AOTAutograd).
    Returns the JSON's serial keys and a closure for one gradient of the fastest variant."""
    b = run.cfg.bench
    model, grad_of = serial_gradient(run, x, y)
    eager = grad_of(model)
    out = {"serial_grad_s": _median_time(eager, b.repeats, b.warmup, run.device),
           "serial_kernels": count_ops(eager)["kernels"]}
    variants = {"serial_grad_s": eager}
    if run.cfg.model.activation == "tanh" and run.device.type == "cpu":
        # the layer-parallel hot path computes tanh as 2 sigmoid(2z) - 1 on the CPU (steps.py):
        # serial autograd with the same formulation is timed too, and the faster one counts
        def sigmoid_form() -> None:
            act, model.act = model.act, tanh_via_sigmoid
            try:
                eager()
            finally:
                model.act = act
        out["serial_sigmoid_grad_s"] = _median_time(sigmoid_form, b.repeats, b.warmup,
                                                    run.device)
        variants["serial_sigmoid_grad_s"] = sigmoid_form
    if run.cfg.runtime.graphs != "eager":
        replay, grads = graphed_serial(model, eager, run.cfg.runtime.graphs)
        replay()
        eager()
        out["serial_graphed_grad_diff"] = max(
            float((g - q.grad).abs().max()) for g, q in zip(grads, model.parameters(), strict=True))
        out["serial_graphed_grad_s"] = _median_time(replay, b.repeats, b.warmup, run.device)
        variants["serial_graphed_grad_s"] = replay
    if b.compile_serial:
        compiled = grad_of(torch.compile(model, dynamic=False, fullgraph=True))
        limit = sys.getrecursionlimit()      # inductor walks the unrolled graph recursively:
        sys.setrecursionlimit(max(limit, 100 * run.cfg.model.layers))   # deep at N = 1024
        try:                                 # the first call compiles forward and backward
            out["serial_compile_s"] = seconds(compiled, run.device)
        finally:
            sys.setrecursionlimit(limit)
        got = [q.grad.clone() for q in model.parameters()]
        eager()
        out["serial_compiled_grad_diff"] = max(
            float((g - q.grad).abs().max()) for g, q in zip(got, model.parameters(), strict=True))
        out["serial_compiled_grad_s"] = _median_time(compiled, b.repeats, b.warmup, run.device)
        variants["serial_compiled_grad_s"] = compiled
    return out, variants[min(variants, key=out.__getitem__)]


def bench(run: Run) -> dict | None:
    cfg, comm, world = run.cfg, run.msg.comm, run.world
    b = cfg.bench
    x, y, idx = bench_batch(run)
    n = x.shape[0]
    N, P = cfg.model.layers, comm.Get_size()

    serial, serial_best = _serial(run, x, y) if world.Get_rank() == 0 else (None, None)
    idle_barrier(world)
    serial = world.bcast(serial, root=0)
    best_s = min(v for k, v in serial.items() if k.startswith("serial_") and
                 k.endswith("_grad_s"))
    link = pingpong(run.msg, run.device, state_bytes(run.shapes, x.shape[0], run.dtype))
    idle_barrier(world)

    # Every repetition differentiates the same batch at the same weights, so warm starts
    # would converge the one-shot iterations and stop them early at the tolerance; in
    # training the weights change every step. The iteration counts are held fixed.
    oneshot = _one(LayerParallelMethod(run, exact=False, fixed_iters=True), x, y, idx,
                   b.repeats, b.warmup, run)
    exact = _one(LayerParallelMethod(run, exact=True), x, y, idx, b.repeats, b.warmup, run) \
        if b.exact else None
    piped = pipeline(run, x, y) if b.pipeline else None
    pairs = paired(run, serial_best, x, y, idx) if b.pairs else None

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu_mb = torch.cuda.max_memory_allocated(run.device) / 2**20 \
        if run.device.type == "cuda" else 0.0
    per_rank = world.gather({"rank": world.Get_rank(), "rss_mb": rss_mb, "gpu_mb": gpu_mb,
                             "oneshot_phases_s": oneshot["phases"],
                             "mgrit_phases_s": exact["phases"] if exact else None}, root=0)
    if world.Get_rank() != 0:
        return None
    return {
        "ranks": P, "layers": N, "batch": n, "width": cfg.model.width, "kind": cfg.model.kind,
        "relax": cfg.mgrit.relax, "cfactor": cfg.mgrit.cfactor, "cycle": cfg.mgrit.cycle,
        "levels": oneshot["levels"], "dtype": cfg.runtime.dtype, "device": str(run.device),
        **serial, "serial_best_grad_s": best_s,
        "oneshot_grad_s": oneshot["seconds"], "ratio_oneshot": oneshot["seconds"] / best_s,
        "ratio_oneshot_eager": oneshot["seconds"] / serial["serial_grad_s"],
        "oneshot_work_sweeps": oneshot["fwd_sweeps"] + oneshot["adj_sweeps"],
        "oneshot_fwd_sweeps": oneshot["fwd_sweeps"], "oneshot_adj_sweeps": oneshot["adj_sweeps"],
        "oneshot_kernels": oneshot["kernels"], "oneshot_iterations": oneshot["iters"],
        "oneshot_replays": oneshot["replays"],
        "oneshot_launches": oneshot["kernels"] + oneshot["replays"],
        "oneshot_kernels_total": oneshot["kernels_total"],
        "oneshot_peak_mb": oneshot["peak_mb"], "oneshot_state_sets": oneshot["state_sets"],
        **({"mgrit_grad_s": exact["seconds"], "ratio_mgrit": exact["seconds"] / best_s,
            "mgrit_fwd_iters": exact["fwd_iters"], "mgrit_adj_iters": exact["adj_iters"],
            "mgrit_fwd_factor": exact["fwd_factor"], "mgrit_adj_factor": exact["adj_factor"],
            "mgrit_work_sweeps": exact["fwd_sweeps"] + exact["adj_sweeps"],
            "mgrit_kernels": exact["kernels"], "mgrit_peak_mb": exact["peak_mb"],
            "mgrit_state_sets": exact["state_sets"],
            "span_speedup_mgrit": 2 * N / exact["span"]} if exact else {}),
        "span_speedup_oneshot": 2 * N / oneshot["span"], "pingpong": link,
        **(piped or {}), "paired": pairs,
        "per_rank": per_rank, "repeats": b.repeats, "warmup": b.warmup,
        "machine": _machine(),
    }


def _machine() -> dict:
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpus": cpus, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "python": platform.python_version()}
