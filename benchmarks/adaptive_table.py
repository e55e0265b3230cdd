"""Fixed one-shot iteration counts against the adaptive ones (``oneshot.check_every``) and
exact MGRIT (``--table counts``), or the one-shot solver options, relaxation per level and
skip, each with its gradient error (``--table options``), on one problem, side by side in
one run (issue 16, item 4).

    mpiexec -n 2 python benchmarks/adaptive_table.py [configs/peaks.yaml] [--set k=v ...]
        [--table counts|options] [--steps 300] [--out adaptive.json]

Each variant trains from the same initial weights on the same batches. Printed on rank 0,
as Markdown: final train loss and validation accuracy (exact forward passes), the mean
forward + adjoint iterations per step, the wall time, and, for the variants that check,
the checks, the final counts and the one-shot gradient's relative error at the checks
(first, median, last). ``monitor`` runs 1 + 1 iterations and checks without ever raising
(max_error 1e9): the error the fixed counts live with (it steps along the exact gradient at
its checks, like every checking variant). Every ``options`` variant is such a monitor, at
its own counts and options. The step time is the median over the steps without a check.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from mpi4py import MPI

from mgrit_nn.commands.bench import idle_barrier
from mgrit_nn.runtime import abort_on_error
from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer

# mini-batches of 100 from 5000 samples: every first visit starts cold, later ones from the
# iterates of an epoch before; T = 4: a stiffer propagation than the default T = 1
PROBLEM = ["data.batch_size=100", "model.T=4", "train.eval_every=0", "checkpoint.every=0",
           "runtime.threads=1"]
CHECK = ["oneshot.check_every=10", "oneshot.max_error=0.5"]
VARIANTS = {
    "oneshot 1+1": ["train.fwd_iters=1", "train.adj_iters=1"],
    "oneshot 2+2": ["train.fwd_iters=2", "train.adj_iters=2"],
    "oneshot 4+4": ["train.fwd_iters=4", "train.adj_iters=4"],
    "monitor 1+1": ["train.fwd_iters=1", "train.adj_iters=1", "oneshot.check_every=10",
                    "oneshot.max_error=1e9"],
    "adaptive from 1+1": ["train.fwd_iters=1", "train.adj_iters=1", *CHECK],
    "exact (mgrit)": ["train.method=mgrit"],
}
MONITOR = ["oneshot.check_every=10", "oneshot.max_error=1e9"]
OPTIONS = {
    f"{relax}{' + skip' if skip else ''}, {n}+{n}": [
        f"mgrit.relax={relax}", f"mgrit.skip={str(skip).lower()}", f"train.fwd_iters={n}",
        f"train.adj_iters={n}", *MONITOR]                    # adjoint: as mgrit
    for n, relax, skip in [(2, "FCF", False), (2, "F", False), (2, "FCFCF", False),
                           (2, "[F, FCF]", False), (2, "[FCF, F]", False), (2, "FCF", True),
                           (2, "F", True), (1, "FCF", False), (1, "F", False)]}
OPTIONS["exact (mgrit)"] = VARIANTS["exact (mgrit)"]
TABLES = {"counts": VARIANTS, "options": OPTIONS}


def one(config: str, sets: list[str], comm: MPI.Comm) -> dict:
    idle_barrier(comm)
    t0 = time.perf_counter()
    trainer = Trainer(setup(config, sets, comm))
    result = trainer.train(quiet=True)
    h = trainer.history
    errors = [r["grad_error"] for r in h if np.isfinite(r.get("grad_error", np.nan))]
    plain = [r["step_time_s"] for r in h if not np.isfinite(r.get("grad_error", np.nan))]
    return {**result, "wall_s": time.perf_counter() - t0, "errors": errors,
            "step_s": float(np.median(plain)),
            "iters": float(np.mean([r["fwd_iters"] + r["adj_iters"] for r in h])),
            "last_counts": (h[-1]["fwd_iters"], h[-1]["adj_iters"]),
            "loss_curve": [r["loss"] for r in h]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config", nargs="?", default="configs/peaks.yaml")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--table", choices=sorted(TABLES), default="counts")
    p.add_argument("--out")
    a = p.parse_args()
    comm = MPI.COMM_WORLD
    rows = {}
    for name, extra in TABLES[a.table].items():
        rows[name] = one(a.config, PROBLEM + [f"train.steps={a.steps}", *extra, *a.set], comm)
    if comm.Get_rank() != 0:
        return
    print(f"\n{a.config}, {comm.Get_size()} ranks, {a.steps} steps, {' '.join(PROBLEM)}\n")
    print("| variant | train loss | val accuracy | iterations / step | wall s | step ms | "
          "checks | final counts | error at checks: first / median / last |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        e = r["errors"]
        err = f"{e[0]:.3f} / {np.median(e):.3f} / {e[-1]:.3f}" if e else "-"
        print(f"| {name} | {r['train_loss']:.4f} | {r['val_accuracy']:.3f} | {r['iters']:.2f} | "
              f"{r['wall_s']:.1f} | {1e3 * r['step_s']:.1f} | "
              f"{len(e)} | {r['last_counts'][0]}+{r['last_counts'][1]} | "
              f"{err} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    with abort_on_error():
        main()
