"""The performance model's strong-scaling table (issue 16, Must show 2): the one-shot
gradient's schedule recorded once per depth and rank count on virtual ranks, replayed on
every machine file; serial autograd priced the same way. One process, no mpiexec:

    M=configs/machines
    python benchmarks/model_table.py configs/peaks.yaml --layers 1024,4096 \\
        --machines $M/dev_2core.yaml,$M/infiniband_cluster_example.yaml \\
        --set runtime.dtype=float32 --set data.batch_size=1000 [--ranks 1,2,4,...] [--exact]

Prints a Markdown table per depth (predicted seconds and speed-up over serial per machine,
the busiest rank's kernels) and the cross-over rank count per machine; ``--out`` keeps the
rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from mpi4py import MPI

from mgrit_nn.commands.bench import bench_batch
from mgrit_nn.commands.model import _serial, gradient_of, stage_counts
from mgrit_nn.commands.pingpong import state_bytes
from mgrit_nn.perfmodel.pipeline import pipeline_s
from mgrit_nn.perfmodel.replay import compute_s, load_machine, replay
from mgrit_nn.perfmodel.trace import totals
from mgrit_nn.perfmodel.virtual import record
from mgrit_nn.setup_run import setup


def pipeline_stages(run, N: int, P: int) -> list[tuple[int, dict, int]]:
    """Per micro-batch count M (powers of 2 dividing the batch): one stage's counted
    forward + backward on a micro-batch and its message size; priced per machine below."""
    n = bench_batch(run)[0].shape[0]
    return [(M, stage_counts(run, max(N // P, 1), n // M), state_bytes(run.shapes, n // M,
                                                                         run.dtype))
            for M in (q for q in (2**k for k in range(12)) if q <= n and n % q == 0)]


def piped(stages: list[tuple[int, dict, int]], P: int, m: dict) -> tuple[float, int]:
    """The pipeline baseline's best predicted time and its M (1F1B has GPipe's bubble)."""
    return min((pipeline_s(stage, P, M, message, m), M) for M, stage, message in stages)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--layers", default="1024")
    p.add_argument("--machines", required=True)
    p.add_argument("--ranks", default="1,2,4,8,16,32,64,128,256,512,1024")
    p.add_argument("--exact", action="store_true")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default=None)
    a = p.parse_args()
    machines = {Path(f).stem: load_machine(f) for f in a.machines.split(",")}
    print("load before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout)
    rows = []
    for N in map(int, a.layers.split(",")):
        run = setup(a.config, [f"model.layers={N}", "runtime.threads=1"] + a.set, MPI.COMM_SELF)
        serial = _serial(run)[1]
        base = {k: compute_s(serial["kernels"], serial["elements"], m)
                for k, m in machines.items()}
        kinds = [("oneshot", False)] + ([("mgrit", True)] if a.exact else [])
        for P in (q for q in map(int, a.ranks.split(",")) if q <= N):
            for name, exact in kinds:
                t0 = time.perf_counter()
                traces = record(run, P, gradient_of(exact))
                row = {"layers": N, "ranks": P, "method": name,
                       "kernels": max(totals(t)["kernels"] for t in traces),
                       "record_s": time.perf_counter() - t0}
                stages = pipeline_stages(run, N, P) if name == "oneshot" else None
                for k, m in machines.items():
                    s = replay(traces, m)["seconds"]
                    row[k] = {"seconds": s, "speedup": base[k] / s, "serial_s": base[k]}
                    if stages:
                        row[k]["pipeline_s"], row[k]["pipeline_m"] = piped(stages, P, m)
                rows.append(row)
                print(f"  N={N} P={P} {name}: recorded in {row['record_s']:.0f} s", flush=True)
    for N in dict.fromkeys(r["layers"] for r in rows):
        for name in dict.fromkeys(r["method"] for r in rows):
            rs = [r for r in rows if r["layers"] == N and r["method"] == name]
            print(f"\nN = {N}, {name}; serial autograd: " + ", ".join(
                f"{k} {rs[0][k]['serial_s'] * 1e3:.1f} ms" for k in machines))
            print("| P | busiest rank's kernels | " + " | ".join(
                f"{k}: predicted [ms] | speed-up | pipeline [ms] (M)" for k in machines) + " |")
            print("|---|---|" + "---|---|---|" * len(machines))
            for r in rs:
                print(f"| {r['ranks']} | {r['kernels']} | " + " | ".join(
                    f"{r[k]['seconds'] * 1e3:.2f} | {r[k]['speedup']:.2f} | "
                    + (f"{r[k]['pipeline_s'] * 1e3:.2f} ({r[k]['pipeline_m']})"
                       if "pipeline_s" in r[k] else "") for k in machines) + " |")
            for k in machines:
                over = [r["ranks"] for r in rs if r[k]["speedup"] > 1]
                best = max(rs, key=lambda r, k=k: r[k]["speedup"])
                print(f"- {k}: cross-over at P = {over[0] if over else 'none'}; best "
                      f"{best[k]['speedup']:.2f}x at P = {best['ranks']}")
    print("\nload after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout)
    if a.out:
        Path(a.out).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
