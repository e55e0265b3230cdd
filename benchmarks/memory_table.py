"""The memory pre-flight against the measured peak RSS (issue 17).

For each config below, runs ``mgrit-nn train`` for a few steps under mpiexec, every rank
reporting its peak resident memory (``ru_maxrss`` at exit), and compares the largest with
the pre-flight estimate of :func:`mgrit_nn.memory.estimate_memory` for the same config
(the number ``mgrit-nn check``/``train`` log). Prints a Markdown table with the estimate's
terms and the ratio estimate / measured.

    python benchmarks/memory_table.py [--only NAME,...] [--json out.json]

Run it on an otherwise idle machine (the RSS does not depend on the load, but the time
does: about 5 min here). ``--set`` overrides apply to every config.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))

DENSE = ["model.width=32", "model.layers=256", "data.n_train=2000", "data.batch_size=2000",
         "data.n_val=200"]
CONV = ["model.kind=conv", "model.channels=4", "model.layers=64", "data.n_train=1000",
        "data.batch_size=1000", "data.n_val=100"]
# name: (config, ranks, overrides)
CASES = {
    "dense-serial-1": ("configs/peaks.yaml", 1, [*DENSE, "train.method=serial"]),
    "dense-oneshot-1": ("configs/peaks.yaml", 1, [*DENSE, "train.method=oneshot"]),
    "dense-oneshot-2": ("configs/peaks.yaml", 2, [*DENSE, "train.method=oneshot"]),
    "dense-mgrit-2": ("configs/peaks.yaml", 2, [*DENSE, "train.method=mgrit"]),
    "dense-penalty-2": ("configs/peaks.yaml", 2, [*DENSE, "train.method=penalty"]),
    "conv-oneshot-1": ("configs/digits_conv.yaml", 1, [*CONV, "train.method=oneshot"]),
    "conv-mgrit-2": ("configs/digits_conv.yaml", 2, [*CONV, "train.method=mgrit"]),
    "conv-penalty-2": ("configs/digits_conv.yaml", 2, [*CONV, "train.method=penalty"]),
}
COMMON = ["train.steps=3", "train.eval_every=0", "checkpoint.every=0", "runtime.threads=1",
          "runtime.dtype=float64"]
# one rank: train, then print its peak RSS (kB on Linux) to stderr when it exits
WRAP = ("import atexit, resource, runpy, sys; atexit.register(lambda: print('PEAK_RSS_KB', "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr, flush=True)); "
        "sys.argv = ['mgrit-nn'] + sys.argv[1:]; runpy.run_module('mgrit_nn', run_name='__main__')")


def measure(config: str, ranks: int, overrides: list[str]) -> list[int]:
    """Peak RSS of every rank, bytes."""
    sets = [a for o in overrides for a in ("--set", o)]
    with tempfile.TemporaryDirectory() as out:
        cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-c", WRAP, "train", config,
               "--out", out, "--quiet", *sets]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"{config} {overrides} failed:\n{p.stderr[-2000:]}")
    return [int(k) * 1024 for k in re.findall(r"PEAK_RSS_KB (\d+)", p.stderr)]


def estimate(config: str, ranks: int, overrides: list[str]) -> dict[str, int]:
    from mgrit_nn.config import read_config
    from mgrit_nn.memory import estimate_memory

    cfg, _ = read_config(str(ROOT / config), overrides)
    return estimate_memory(cfg, ranks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated case names (default: all)")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every case")
    ap.add_argument("--json", help="also write the measurements here")
    a = ap.parse_args()
    names = a.only.split(",") if a.only else list(CASES)
    mib = 2**20
    print(f"load average before: {os.getloadavg()[0]:.2f}\n")
    print("| case | ranks | estimate MiB | terms (MiB) | measured peak RSS MiB (max rank) "
          "| estimate / measured |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in names:
        config, ranks, overrides = CASES[name]
        overrides = [*overrides, *COMMON, *a.set]
        terms = estimate(config, ranks, overrides)
        peak = max(measure(config, ranks, overrides))
        total = sum(terms.values())
        parts = ", ".join(f"{k} {v / mib:.0f}" for k, v in terms.items() if v >= mib)
        print(f"| {name} | {ranks} | {total / mib:.0f} | {parts} | {peak / mib:.0f} | "
              f"{total / peak:.2f} |", flush=True)
        rows.append({"case": name, "ranks": ranks, "overrides": overrides, "terms": terms,
                     "measured_peak_rss": peak})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
