"""``mgrit-nn bench`` over batch sizes and widths on the current ranks: where does the
one-shot gradient pay off against serial autograd?

    mpiexec -n P python benchmarks/bench_grid.py [--layers 256] [--out grid.json] [--set k=v ...]

Prints a Markdown table on rank 0 (one row per batch x width, all measured in this run).
"""

from __future__ import annotations

import argparse
import json

from mpi4py import MPI

from mgrit_nn.methods.bench import bench
from mgrit_nn.runtime import abort_on_error, node_ranks
from mgrit_nn.setup_run import setup


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=256)
    p.add_argument("--batches", default="100,1000,5000")
    p.add_argument("--widths", default="8,32,128")
    p.add_argument("--out", default=None)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    node_ranks()
    rows = []
    for batch in map(int, args.batches.split(",")):
        for width in map(int, args.widths.split(",")):
            run = setup("configs/peaks.yaml", [
                f"model.layers={args.layers}", f"model.width={width}", f"data.n_train={batch}",
                "data.n_val=0", "data.batch_size=0", "mgrit.relax=F", "bench.exact=false",
                "bench.repeats=3", "bench.warmup=1", *args.set], MPI.COMM_WORLD)
            r = bench(run)
            if r is not None:
                rows.append(r)
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(f"\nranks {rows[0]['ranks']}, N = {args.layers}, F-relaxation, 2+2 iterations, "
              f"threads/rank {rows[0]['machine']['threads']}\n")
        print("| batch | width | serial_grad_s | oneshot_grad_s | ratio_oneshot | work [sweeps] "
              "| peak RSS rank 0 [MB] |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['batch']} | {r['width']} | {r['serial_grad_s']:.4f} | "
                  f"{r['oneshot_grad_s']:.4f} | {r['ratio_oneshot']:.2f} | "
                  f"{r['oneshot_work_sweeps']:.2f} | {r['per_rank'][0]['rss_mb']:.0f} |")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f)


if __name__ == "__main__":
    with abort_on_error():
        main()
