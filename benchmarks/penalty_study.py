"""penalty and al on K = 1 .. P stages, side by side in one run (issue 6).

    mpiexec -n 4 python benchmarks/penalty_study.py configs/levelset_penalty.yaml \
        [--set k=v ...] [--out study.json]

For every K the first K ranks train (the others wait without spinning) with
``train.method`` = penalty and al, the config's other settings unchanged (the al run
takes its own beta schedule from ``--al-set``). Printed on rank 0, as Markdown:

- accuracy, final honest loss, final constraint violation and wall time per (method, K);
- the constraint violation at the end of every beta phase (it must fall as beta rises);
- the timeline of the last step (run with ``train.eval_every=0`` so that the byte count
  per step is the training traffic alone): when each rank's local forward+backward started and
  ended (seconds after the earliest start) -- concurrent stages overlap -- and the bytes
  each rank sent per step next to the size of one interface state.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from mpi4py import MPI

from mgrit_nn.commands.bench import idle_barrier
from mgrit_nn.runtime import abort_on_error, node_ranks
from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer


def one(config: str, sets: list[str], comm: MPI.Comm) -> dict:
    trainer = Trainer(setup(config, sets, comm))
    msg = trainer.run.msg
    sent0 = msg.sent_bytes
    result = trainer.train(quiet=True)
    before_eval = msg.sent_bytes             # train() ends with two evaluations: one more
    trainer.evaluate(trainer.x, trainer.y)   # pair measures what they sent
    trainer.evaluate(trainer.xv, trainer.yv)
    sent0 += msg.sent_bytes - before_eval
    msg.sent_bytes = before_eval
    steps = max(1, len(trainer.history))
    m = trainer.method
    start, end = m.busy
    spans = comm.gather((start, end, (msg.sent_bytes - sent0) / steps), root=0)
    h = trainer.history
    result.update(
        violation=[r["violation"] for r in h], beta=[r["beta"] for r in h],
        honest=[r.get("honest_loss", float("nan")) for r in h],
        state_bytes=int(np.prod(trainer.run.shapes.state)) * len(trainer.x)
        * trainer.x.element_size(), spans=spans)
    return result


def phase_ends(r: dict) -> list[tuple[float, float]]:
    """(beta, violation) at the last step of every beta phase."""
    out = []
    for k, b in enumerate(r["beta"]):
        if k + 1 == len(r["beta"]) or r["beta"][k + 1] != b:
            out.append((b, r["violation"][k]))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--al-set", action="append", default=[],
                   help="overrides for the al runs only (e.g. its beta schedule)")
    p.add_argument("--methods", default="penalty,al")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    world = MPI.COMM_WORLD
    node_ranks()
    P, rank = world.Get_size(), world.Get_rank()
    results = []
    for method in args.methods.split(","):
        sets = args.set + [f"train.method={method}"] + (args.al_set if method == "al" else [])
        for K in range(1, P + 1):
            sub = world.Split(0 if rank < K else MPI.UNDEFINED, rank)
            if sub != MPI.COMM_NULL:
                r = one(args.config, sets, sub)
                if rank == 0:
                    r["K"] = K
                    results.append(r)
                sub.Free()
            idle_barrier(world)
    if rank != 0:
        return
    print(f"\nconfig: {args.config} {' '.join(args.set)}\n")
    print("| method | K | steps | train acc | test acc | train loss (serial pass) "
          "| final violation | final beta | wall time [s] | vs K=1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = {}
    for r in results:
        base.setdefault(r["method"], r["wall_time_s"])
        print(f"| {r['method']} | {r['K']} | {r['steps']} | {r['train_accuracy']:.3f} "
              f"| {r['val_accuracy']:.3f} | {r['train_loss']:.4f} | {r['violation'][-1]:.3e} "
              f"| {r['beta'][-1]:g} | {r['wall_time_s']:.1f} "
              f"| {base[r['method']] / r['wall_time_s']:.2f}x |")
    print("\nconstraint violation at the end of each beta phase:\n")
    for r in results:
        if r["K"] > 1:
            ends = ", ".join(f"beta={b:g}: {v:.3e}" for b, v in phase_ends(r))
            print(f"- {r['method']} K={r['K']}: {ends}")
    print("\nlast step, per rank: local work [start, end] s after the earliest start; "
          "bytes sent per step (one interface state: B x state x dtype bytes):\n")
    for r in results:
        if r["K"] > 1:
            t0 = min(s[0] for s in r["spans"])
            spans = "; ".join(f"r{q}: [{s[0] - t0:.4f}, {s[1] - t0:.4f}] {s[2]:.0f} B"
                              for q, s in enumerate(r["spans"]))
            print(f"- {r['method']} K={r['K']} (state {r['state_bytes']} B): {spans}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    with abort_on_error():
        main()
