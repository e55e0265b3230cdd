"""Checkpoint write time and memory per rank, single file against shards (issue 17).

For each layout (``single``: rank 0 gathers and writes one file; ``sharded``: every rank
its own shard) and P ranks, trains the README's network class (peaks, N layers, width 8,
oneshot with warm starts, Adam) for two steps of batch ``--batch`` and then writes one
checkpoint, measuring on every rank

- the wall time of the write (from a barrier before to a barrier after),
- the memory the write adds on top of what the rank already holds: the kernel's peak RSS
  (VmHWM) is reset just before (``/proc/self/clear_refs``), and the peak during the write
  minus the RSS before it is reported,
- the bytes of the checkpoint on disk.

    python benchmarks/checkpoint_table.py [--ranks 1 2 4] [--layers 256] [--batch 1000]
                                          [--n-train 16000]

Prints a Markdown table (one row per layout and P; max over ranks and rank 0's own).
Oversubscribed ranks are fine for the memory; the times then include waiting for cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(args) -> None:
    """One rank: train two steps, then time and measure one checkpoint write."""

    sys.path.insert(0, str(ROOT))
    from mgrit_nn.setup_run import setup
    from mgrit_nn.train.checkpoint import save
    from mgrit_nn.train.loop import Trainer

    out = Path(args.out)
    overrides = [f"model.layers={args.layers}", "model.width=8", f"data.n_train={args.n_train}",
                 "data.n_val=100", f"data.batch_size={args.batch}", "train.steps=2",
                 "train.method=oneshot", "train.eval_every=0",
                 f"checkpoint.layout={args.layout}", "checkpoint.keep=0"]
    run = setup(str(ROOT / "configs/peaks.yaml"), overrides)
    trainer = Trainer(run)
    trainer.train(quiet=True)
    comm = run.world
    comm.Barrier()
    rss = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")       # VmHWM := VmRSS
    comm.Barrier()
    t0 = time.perf_counter()
    save(trainer, out, 2)
    comm.Barrier()
    seconds = time.perf_counter() - t0
    extra = (_kib("VmHWM") - rss) / 1024
    rows = comm.gather({"rank": comm.Get_rank(), "write_s": seconds, "extra_mib": extra}, root=0)
    if comm.Get_rank() == 0:
        size = sum(f.stat().st_size for f in (out / "checkpoints").rglob("*") if f.is_file())
        print(json.dumps({"ranks": rows, "bytes": size}))


def measure(layout: str, P: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [MPIEXEC, "-n", str(P), sys.executable, __file__, "--worker", "--out", tmp,
               "--layout", layout, "--layers", str(args.layers), "--batch", str(args.batch),
               "--n-train", str(args.n_train)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                           timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"{layout} P={P} failed:\n{p.stderr[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--layers", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=16000,
                    help="training samples: the warm starts, the bulk of a checkpoint")
    ap.add_argument("--json", help="also write the measurements here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--layout", default="sharded", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print(f"load average before: {os.getloadavg()[0]:.2f}; N={args.layers}, width 8, "
          f"batch {args.batch}, n_train {args.n_train} (oneshot warm starts, Adam)\n")
    print("| layout | P | checkpoint MiB | write s (max over ranks) | extra memory MiB, "
          "rank 0 | extra memory MiB, max other rank |")
    print("|---|---|---|---|---|---|")
    results = []
    for layout in ("single", "sharded"):
        for P in args.ranks:
            if layout == "sharded" and P == 1:
                continue                          # one writer: always the single file
            r = measure(layout, P, args)
            ranks = r["ranks"]
            others = max((x["extra_mib"] for x in ranks[1:]), default=float("nan"))
            print(f"| {layout} | {P} | {r['bytes'] / 2**20:.1f} | "
                  f"{max(x['write_s'] for x in ranks):.2f} | {ranks[0]['extra_mib']:.1f} | "
                  f"{others:.1f} |", flush=True)
            results.append({"layout": layout, "P": P, **r})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
