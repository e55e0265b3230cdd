"""``mgrit-nn bench`` over depths, batch sizes and widths on the current ranks: where does
the one-shot gradient pay off against serial autograd, and (``--exact``) how many MGRIT
iterations does an exact gradient take at each depth?

    mpiexec -n P python benchmarks/bench_grid.py [--layers 256] [--batches 100,1000,5000]
        [--widths 8,32,128] [--exact] [--out grid.json] [--set k=v ...]

Prints a Markdown table on rank 0 (one row per depth x batch x width, all measured in this
run); ``--exact`` adds exact MGRIT's time, iterations and convergence factors (forward and
adjoint), so performance and convergence are read together.
"""

from __future__ import annotations

import argparse
import json

from mpi4py import MPI

from mgrit_nn.commands.bench import bench
from mgrit_nn.runtime import abort_on_error, node_ranks
from mgrit_nn.setup_run import setup


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def table(rows: list[dict], exact: bool) -> list[str]:
    cols = ["N", "batch", "width", "serial_grad_s", "oneshot_grad_s", "ratio_oneshot",
            "work [sweeps]"]
    if exact:
        cols += ["mgrit_grad_s", "ratio_mgrit", "iters fwd/adj", "factor fwd", "factor adj",
                 "mgrit work [sweeps]"]
    cols += ["peak RSS rank 0 [MB]"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["layers"], r["batch"], r["width"], f"{r['serial_grad_s']:.4f}",
                 f"{r['oneshot_grad_s']:.4f}", f"{r['ratio_oneshot']:.2f}",
                 f"{r['oneshot_work_sweeps']:.2f}"]
        if exact:
            cells += [f"{r['mgrit_grad_s']:.4f}", f"{r['ratio_mgrit']:.2f}",
                      f"{r['mgrit_fwd_iters']} / {r['mgrit_adj_iters']}",
                      f"{r['mgrit_fwd_factor']:.3f}", f"{r['mgrit_adj_factor']:.3f}",
                      f"{r['mgrit_work_sweeps']:.1f}"]
        cells += [f"{r['per_rank'][0]['rss_mb']:.0f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", default="256")
    p.add_argument("--batches", default="100,1000,5000")
    p.add_argument("--widths", default="8,32,128")
    p.add_argument("--exact", action="store_true", help="also exact MGRIT (to mgrit.tol)")
    p.add_argument("--out", default=None)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    node_ranks()
    rows = []
    for N in ints(args.layers):
        for batch in ints(args.batches):
            for width in ints(args.widths):
                run = setup("configs/peaks.yaml", [
                    f"model.layers={N}", f"model.width={width}", f"data.n_train={batch}",
                    "data.n_val=0", "data.batch_size=0", "mgrit.relax=F",
                    f"bench.exact={str(args.exact).lower()}", "bench.repeats=3",
                    "bench.warmup=1", *args.set], MPI.COMM_WORLD)
                r = bench(run)
                if r is not None:
                    rows.append(r)
    if MPI.COMM_WORLD.Get_rank() == 0:
        r0 = rows[0]
        print(f"\nranks {r0['ranks']}, {r0['relax']}-relaxation, one-shot 2+2 iterations, "
              f"threads/rank {r0['machine']['threads']}, {r0['dtype']}\n")
        print("\n".join(table(rows, args.exact)))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f)


if __name__ == "__main__":
    with abort_on_error():
        main()
