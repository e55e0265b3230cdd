"""Training methods side by side in one run, on the same config: final accuracy, steps,
wall time, MGRIT iterations per step.

    mpiexec -n 4 python benchmarks/methods_table.py CONFIG [--set k=v ...] \
        [--methods serial,mgrit,oneshot,penalty,al,parpas,local_critic] \
        [--dtypes float32,float64] [--out table.json]

serial runs on rank 0 alone (the other ranks wait without spinning), every other method
on all ranks. ``--dtypes``: each method in each dtype (``runtime.dtype``), the dtypes of
a method one after the other, so their times are compared under the same load.
Prints a Markdown table on rank 0.
"""

from __future__ import annotations

import argparse
import json

from mpi4py import MPI

from mgrit_nn.commands.bench import idle_barrier
from mgrit_nn.runtime import abort_on_error, node_ranks
from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer


def run_method(config: str, sets: list[str], method: str, comm: MPI.Comm) -> dict:
    run = setup(config, sets + [f"train.method={method}"], comm)
    trainer = Trainer(run)
    result = trainer.train(quiet=True)
    result["loss_curve"] = [r["loss"] for r in trainer.history]
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--methods", default="serial,mgrit,oneshot")
    p.add_argument("--dtypes", default=None, help="comma list; default: the config's dtype")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    world = MPI.COMM_WORLD
    node_ranks()            # collective on first call: before rank 0 works alone
    dtypes = args.dtypes.split(",") if args.dtypes else ["config"]
    results = []
    for method in args.methods.split(","):
        for dtype in dtypes:
            sets = args.set + ([f"runtime.dtype={dtype}"] if dtype != "config" else [])
            if method == "serial":
                if world.Get_rank() == 0:
                    results.append(run_method(args.config, sets, "serial", MPI.COMM_SELF))
                idle_barrier(world)
            else:
                results.append(run_method(args.config, sets, method, world))
            if world.Get_rank() == 0:
                results[-1]["dtype"] = dtype
    if world.Get_rank() == 0:
        print(f"\nconfig: {args.config} {' '.join(args.set)}\n")
        print("| method | dtype | ranks | steps | train acc | val acc | train loss (exact) "
              "| wall time [s] | fwd iters/step | adj iters/step |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['method']} | {r['dtype']} | {r['ranks']} | {r['steps']} "
                  f"| {r['train_accuracy']:.3f} "
                  f"| {r['val_accuracy']:.3f} | {r['train_loss']:.4f} | {r['wall_time_s']:.1f} "
                  f"| {r['fwd_iters_per_step']:.1f} | {r['adj_iters_per_step']:.1f} |")
        for dtype in dtypes:
            curves = {r["method"]: r["loss_curve"] for r in results if r["dtype"] == dtype}
            if "serial" in curves and "mgrit" in curves:
                ser, mg = curves["serial"], curves["mgrit"]
                worst = max(abs(a - b) / abs(b) for a, b in zip(mg[:20], ser[:20], strict=True))
                print(f"\nmgrit vs serial loss curve ({dtype} dtype), first 20 "
                      f"steps: max relative difference {worst:.2e}")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f)


if __name__ == "__main__":
    with abort_on_error():
        main()
