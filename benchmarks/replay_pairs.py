"""How much of a one-shot gradient is the solver's own Python: eager against replayed.

    python benchmarks/replay_pairs.py [CONFIG] [--batches 4,32] [--pairs 30] [--set K=V ...]

One rank. Two one-shot methods of the same network in one process: ``runtime.graphs:
eager`` and ``emulate`` (every MGRIT iteration replayed from its list of ATen operations,
no solver Python; mgrit/capture.py). They are timed alternately, each timed gradient right
after an untimed one of the same method; prints per batch size the median times and the
quartiles of the per-pair ratio replayed / eager (docs/performance.md, whole-iteration
capture). Defaults: N = 1024, width 8, float32, one thread.
"""

from __future__ import annotations

import argparse
import statistics

from mpi4py import MPI

from mgrit_nn.commands.model import gradient_of
from mgrit_nn.commands.paired import quartiles, seconds
from mgrit_nn.setup_run import setup


def gradient(config: str | None, sets: list[str], batch: int, graphs: str):
    """The one-shot gradient of the bench (fixed counts) on one rank, its recordings made."""
    run = setup(config, ["model.layers=1024", "runtime.threads=1", *sets,
                         f"data.n_train={batch}", f"runtime.graphs={graphs}"], MPI.COMM_SELF)
    grad = gradient_of(exact=False)(run)
    for _ in range(4):               # eager, recorded, replayed: every kind seen
        grad()
    return grad, run.device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?")
    ap.add_argument("--batches", default="4,32")
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    print("| batch | eager [ms] | replayed [ms] | ratio quartiles |\n|---|---|---|---|")
    for b in map(int, a.batches.split(",")):
        (eager, device), (replayed, _) = (gradient(a.config, a.set, b, g)
                                          for g in ("eager", "emulate"))
        te, tr = [], []
        for _ in range(a.pairs):
            te.append(seconds(eager, device, warm=True))
            tr.append(seconds(replayed, device, warm=True))
        q = quartiles([r / e for e, r in zip(te, tr, strict=True)])
        print(f"| {b} | {1e3 * statistics.median(te):.2f} | {1e3 * statistics.median(tr):.2f} "
              f"| {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
