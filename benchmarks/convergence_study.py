"""MGRIT convergence study: iterations and convergence factors vs. N, relaxation and cycle,
and the gradient error of a fixed small number of iterations (the one-shot inexactness).

    mpiexec -n 4 python benchmarks/convergence_study.py [--out study.json] [--set k=v ...]

Writes a JSON list (one row per run) and prints a Markdown table on rank 0. Iteration
counts, residuals and errors do not depend on the number of ranks.
"""

from __future__ import annotations

import argparse
import json

from mpi4py import MPI

from mgrit_nn.commands.check import gradient_errors
from mgrit_nn.runtime import abort_on_error
from mgrit_nn.setup_run import setup

BASE = ["data.name=peaks", "data.n_train=500", "data.n_val=0", "model.width=8",
        "model.T=1.0", "mgrit.cfactor=4", "mgrit.levels=10", "mgrit.max_iter=60"]


def row(overrides: list[str], fwd_iters=None, adj_iters=None) -> dict:
    run = setup(None, BASE + overrides, MPI.COMM_WORLD)
    net = run.network()
    x, y = run.data.x_train.to(run.dtype), run.data.y_train
    fwd = net.solve_forward(x, max_iter=fwd_iters)
    grads = net.backprop(x, y, **({} if adj_iters is None else {"max_iter": adj_iters}))
    err, worst = gradient_errors(run, net, grads, x, y)
    adj = net.adj_result
    return {"N": run.cfg.model.layers, "relax": run.cfg.mgrit.relax,
            "cycle": run.cfg.mgrit.cycle, "levels": len(net.solver.levels),
            "fwd_iters": fwd.iters, "fwd_conv_factor": fwd.conv_factor,
            "fwd_final_residual": fwd.residuals[-1], "adj_iters": adj.iters,
            "adj_conv_factor": adj.conv_factor, "adj_final_residual": adj.residuals[-1],
            "grad_rel_err": err, "grad_max_rel_err": worst}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    rows = []
    for N in (64, 256, 1024, 4096):
        for relax in ("F", "FCF"):
            for cycle in ("V", "F"):
                rows.append(row([f"model.layers={N}", f"mgrit.relax={relax}",
                                 f"mgrit.cycle={cycle}", "mgrit.tol=1e-10"] + args.set))
    inexact = [row([f"model.layers={N}", "mgrit.relax=FCF", "mgrit.tol=0"] + args.set, 2, 2)
               for N in (64, 256, 1024)]
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(f"ranks: {MPI.COMM_WORLD.Get_size()}\n")
        print("| N | relax | cycle | levels | fwd iters | fwd factor | adj iters | adj factor |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['N']} | {r['relax']} | {r['cycle']} | {r['levels']} | {r['fwd_iters']} "
                  f"| {r['fwd_conv_factor']:.3f} | {r['adj_iters']} | {r['adj_conv_factor']:.3f} |")
        print("\nFixed 2 forward + 2 adjoint iterations (FCF, V, cfactor 4):\n")
        print("| N | fwd residual | adj residual | grad_rel_err | grad_max_rel_err |")
        print("|---|---|---|---|---|")
        for r in inexact:
            print(f"| {r['N']} | {r['fwd_final_residual']:.2e} | {r['adj_final_residual']:.2e} "
                  f"| {r['grad_rel_err']:.2e} | {r['grad_max_rel_err']:.2e} |")
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"ranks": MPI.COMM_WORLD.Get_size(), "tolerance_runs": rows,
                           "fixed_iteration_runs": inexact}, f, indent=1)


if __name__ == "__main__":
    with abort_on_error():
        main()
