"""``mgrit-nn model``: the calibrated performance model of one gradient (issue 16).

Calibration (no ``--machine``; 2 or more ranks): rank 0 times serial autograd and the
one-shot gradient on one rank, recording the one-shot schedule twice, once timed (the
compute segments between messages) and once counted (their kernels and elements); a
least-squares fit of the segment times gives ``kernel_s`` and ``element_s``; the bench's
ping-pong gives ``latency_s`` and ``bandwidth_Bps``. All ranks then time the one-shot
gradient on the whole group: the measurement the prediction is checked against.

Prediction: for every rank count of ``--ranks``, the one-shot (and with ``--exact`` the
exact MGRIT) gradient's schedule is recorded on that many virtual ranks (the solver's own
code in threads, :mod:`mgrit_nn.perfmodel.virtual`) and replayed on the machine
(:mod:`mgrit_nn.perfmodel.replay`); serial autograd is its counted kernels and elements
priced the same way. The cross-over is the smallest rank count predicted faster than
serial.
"""

from __future__ import annotations

import statistics
import time

import torch
import yaml
from mpi4py import MPI

from mgrit_nn.commands.bench import _median_time, bench_batch, idle_barrier, serial_gradient
from mgrit_nn.commands.pingpong import pingpong, state_bytes
from mgrit_nn.config import ConfigError
from mgrit_nn.methods.base import Batch
from mgrit_nn.methods.layer_parallel import LayerParallelMethod
from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.perfmodel.replay import KEYS, compute_s, fit, load_machine, replay
from mgrit_nn.perfmodel.trace import Trace, totals
from mgrit_nn.perfmodel.virtual import on_virtual_ranks, record
from mgrit_nn.runtime import agree_on_config
from mgrit_nn.setup_run import Run


def gradient_of(exact: bool):
    """``run -> (() -> None)``: one gradient of the layer-parallel method on ``run``'s group
    (one-shot with fixed iteration counts, as the bench, or exact MGRIT)."""
    def make(run: Run):
        method = LayerParallelMethod(run, exact=exact, fixed_iters=not exact)
        x, y, idx = bench_batch(run)
        return lambda: method.step(Batch(x, y, idx))
    return make


def _serial(run: Run):
    """Serial autograd's gradient, and its kernels and elements."""
    x, y, _ = bench_batch(run)
    model, grad_of = serial_gradient(run, x, y)
    grad = grad_of(model)
    with Trace(count=True) as tr:
        grad()
    return grad, totals(tr.events)


def stage_counts(run: Run, layers: int, batch: int) -> dict:
    """Kernels and elements of serial autograd's forward + backward through ``layers``
    layers (a middle pipeline stage) on ``batch`` samples."""
    from mgrit_nn.commands.pipeline import _Stage

    net = SerialResNet(run.cfg.model, run.shapes, run.dtype, run.device)
    stage = _Stage(net, 0, layers, False, False)
    u = torch.zeros((batch,) + run.shapes.state, dtype=run.dtype, device=run.device,
                    requires_grad=True)
    g = torch.ones_like(u)
    with Trace(count=True) as tr:
        stage(u).backward(g)
    return totals(tr.events)


def timed_segments(r: Run) -> tuple[list[tuple], float]:
    """(kernels, elements, median seconds) of every compute segment of this rank's part of
    the one-shot gradient, and the gradient's median time (the slowest rank's)."""
    b = r.cfg.bench
    g = gradient_of(False)(r)
    for _ in range(max(b.warmup, 1)):
        g()
    runs, whole = [], []
    for _ in range(b.repeats):
        r.msg.comm.Barrier()
        t0 = time.perf_counter()
        with Trace(count=False) as tr:
            r.msg.trace = tr
            g()
            r.msg.trace = None
        whole.append(r.msg.comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        runs.append([e for e in tr.events if e[0] == "c"])
    with Trace(count=True) as tr:
        r.msg.trace = tr
        g()
        r.msg.trace = None
    counted = [e for e in tr.events if e[0] == "c"]
    if any(len(t) != len(counted) for t in runs):
        raise RuntimeError("the timed and the counted schedules differ")
    segs = [(c[1], c[2], statistics.median(t[k][3] for t in runs))
            for k, c in enumerate(counted)]
    return segs, statistics.median(whole)


def calibrate(run: Run) -> dict:
    """The machine file's numbers and what they were fitted to (rank 0; None elsewhere)."""
    world = run.world
    out = None
    if world.Get_rank() == 0:
        grad, serial = _serial(run)
        serial_s = _median_time(grad, run.cfg.bench.repeats, run.cfg.bench.warmup, run.device)
        segs, one_rank_s = on_virtual_ranks(1, timed_segments, run)[0]
        m = fit(segs + [(serial["kernels"], serial["elements"], serial_s)])
        out = {"machine": m, "serial_grad_s": serial_s, "oneshot_grad_s_1": one_rank_s,
               "segments": len(segs), "serial": serial}
    idle_barrier(world)
    x, *_ = bench_batch(run)
    link = pingpong(run.msg, run.device, state_bytes(run.shapes, x.shape[0], run.dtype))
    idle_barrier(world)
    segs, measured = timed_segments(run)          # every rank: its part on the whole group
    busy = run.msg.comm.gather(sum(s[2] for s in segs), root=0)
    loaded = run.msg.comm.gather(segs, root=0)
    if world.Get_rank() != 0:
        return None
    out["machine"].update(latency_s=link["latency_s"], bandwidth_Bps=link["bandwidth_Bps"])
    out["pingpong"] = link
    P = run.msg.size
    out[f"oneshot_grad_s_{P}"] = measured
    out[f"busy_s_{P}"] = busy
    # the same fit to the segments timed while all P ranks compute at once: what a core
    # delivers when its neighbours are busy too (shared caches, memory bandwidth, clocks)
    out["machine_loaded"] = {**out["machine"], **fit([s for r in loaded for s in r])}
    return out


def predict(run: Run, m: dict, ranks: list[int], exact: bool, serial: dict,
            keep: int | None = None) -> tuple[list[dict], list | None]:
    """One row per rank count; and the one-shot schedule recorded at ``keep`` ranks."""
    rows, kept = [], None
    serial_s = compute_s(serial["kernels"], serial["elements"], m)
    for P in ranks:
        row = {"ranks": P}
        for name, ex in (("oneshot", False),) + ((("mgrit", True),) if exact else ()):
            traces = record(run, P, gradient_of(ex))
            if P == keep and not ex:
                kept = traces
            r = replay(traces, m)
            tot = [totals(t) for t in traces]
            row.update({f"{name}_s": r["seconds"], f"{name}_speedup": serial_s / r["seconds"],
                        f"{name}_kernels": max(t["kernels"] for t in tot),
                        f"{name}_busy_s": max(r["busy_s"])})
        rows.append(row)
    return rows, kept


def rank_list(text: str | None, layers: int) -> list[int]:
    """``--ranks``: comma-separated rank counts 1 .. layers (default powers of 2 to 1024)."""
    if text is None:
        return [p for p in (2**k for k in range(11)) if p <= layers]
    try:
        ranks = [int(v) for v in text.split(",")]
    except ValueError:
        ranks = []
    if not ranks or any(p < 1 or p > layers for p in ranks):
        raise ConfigError(f"--ranks {text}: give rank counts 1 .. model.layers ({layers}), "
                          "comma-separated")
    return ranks


def model_command(run: Run, machine: str | None, ranks_text: str | None, exact: bool,
                  write_machine: str | None) -> dict | None:
    world, given = run.world, {}

    def check() -> None:
        if run.cfg.runtime.graphs != "eager":
            raise ConfigError("mgrit-nn model: runtime.graphs must be eager (the model prices "
                              "every operation the solvers dispatch, on virtual ranks that "
                              "exchange messages; a replayed iteration is one launch)")
        if machine is None and run.msg.size < 2:
            raise ConfigError("mgrit-nn model: calibrating the message model needs 2 ranks "
                              "(mpiexec -n 2 mgrit-nn model ...), or give --machine FILE")
        if machine is not None:
            try:
                given["machine"] = load_machine(machine)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                raise ConfigError(f"--machine {machine}: {exc}") from None
        given["ranks"] = rank_list(ranks_text, run.cfg.model.layers)
    agree_on_config(check, world)
    ranks = given["ranks"]
    cal = calibrate(run) if machine is None else None
    if world.Get_rank() != 0:
        return None
    m = cal["machine"] if cal else given["machine"]
    if write_machine:
        with open(write_machine, "w") as f:
            f.write(f"# mgrit-nn model: calibrated on {run.cfg.model.kind} width "
                    f"{run.cfg.model.width}, batch {bench_batch(run)[0].shape[0]}, "
                    f"{run.cfg.runtime.dtype}, {run.msg.size} ranks\n")
            f.writelines(f"{k}: {m[k]:.4g}\n" for k in KEYS)
    serial = cal["serial"] if cal else _serial(run)[1]
    wanted = sorted(set(ranks) | ({1, run.msg.size} if cal else set()))
    rows, traces = predict(run, m, wanted, exact, serial, keep=run.msg.size if cal else None)
    serial_s = compute_s(serial["kernels"], serial["elements"], m)
    faster = [r["ranks"] for r in rows if r["oneshot_s"] < serial_s]
    out = {"layers": run.cfg.model.layers, "batch": bench_batch(run)[0].shape[0],
           "dtype": run.cfg.runtime.dtype, "machine": m, "serial_predicted_s": serial_s,
           "serial_kernels": serial["kernels"], "predicted": rows,
           "crossover_ranks": faster[0] if faster else None}
    if cal:
        at = {r["ranks"]: r["oneshot_s"] for r in rows}
        P = run.msg.size
        out["validation"] = {
            "serial": {"measured_s": cal["serial_grad_s"], "predicted_s": serial_s},
            "oneshot_1": {"measured_s": cal["oneshot_grad_s_1"], "predicted_s": at[1]},
            f"oneshot_{P}": {"measured_s": cal[f"oneshot_grad_s_{P}"], "predicted_s": at[P]}}
        ml = cal["machine_loaded"]
        loaded = replay(traces, ml)
        out["validation"][f"oneshot_{P}_loaded"] = {
            "measured_s": cal[f"oneshot_grad_s_{P}"], "predicted_s": loaded["seconds"]}
        out["validation"][f"busy_{P}"] = {
            "measured_s": max(cal[f"busy_s_{P}"]),
            "predicted_s": max(replay(traces, m)["busy_s"])}
        out["validation"][f"busy_{P}_loaded"] = {
            "measured_s": max(cal[f"busy_s_{P}"]), "predicted_s": max(loaded["busy_s"])}
        for v in out["validation"].values():
            v["error"] = v["predicted_s"] / v["measured_s"] - 1
        out["pingpong"], out["machine_loaded"] = cal["pingpong"], ml
    return out

