"""Where the parallel efficiency P = 1 -> 2 of the one-shot gradient goes, in three factors.

    python benchmarks/efficiency_parts.py CONFIG [--sequences 3] [--mpiexec "mpiexec -bind-to core"]
        [--set k=v ...]

Each sequence runs, back to back, ``mgrit-nn bench`` (one-shot only) as

    a. one rank, the whole network (N layers)
    b. one rank, half the network (N / 2 layers): what each of two ranks owns
    c. two one-rank runs of (b) at the same time: one launch of 2 ranks as 2 data replicas
       of one layer rank each (``parallel.data_replicas=2``: nothing exchanged while the
       bench times them, and a launcher's binding applies as to (d); the first replica's
       time); the machine shared
    d. two ranks, the whole network

and prints per sequence the efficiency a / (2 d) and its three factors:

    a / (2 b)   the problem: does half the network take half the time on one core?
    b / c       the machine: what running two processes at once costs each (caches,
                memory bandwidth, clocks shared by the cores)
    c / d       the method on two ranks: messages, waits, the leading points, the coarsest
                solve, the kernels a rank issues whatever its share

so that a / (2 d) = (a / (2 b)) (b / c) (c / d). The runs of one sequence follow each other
within a minute; the machine's slow spells still show as spread between sequences.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

BENCH = ["mgrit-nn", "bench", "--set", "bench.exact=false"]


def _launch(mpiexec: list[str], ranks: int, config: str, layers: int,
            sets: list[str]) -> subprocess.Popen:
    cmd = [*mpiexec, "-n", str(ranks), *BENCH[:2], config, *BENCH[2:], *sets,
           "--set", f"model.layers={layers}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _seconds(p: subprocess.Popen) -> float:
    """The launched bench's ``oneshot_grad_s``."""
    text, _ = p.communicate()
    if p.returncode:
        sys.exit(f"efficiency_parts: mgrit-nn bench failed (exit {p.returncode})")
    return json.loads(text.strip().splitlines()[-1])["oneshot_grad_s"]


def sequence(mpiexec: list[str], config: str, layers: int, sets: list[str]) -> dict:
    def run(ranks: int, n: int, more: tuple[str, ...] = ()) -> float:
        return _seconds(_launch(mpiexec, ranks, config, n, [*sets, *more]))
    a, b = run(1, layers), run(1, layers // 2)
    c = run(2, layers // 2, ("--set", "parallel.data_replicas=2"))
    d = run(2, layers)
    return {"a": a, "b": b, "c": c, "d": d, "efficiency": a / (2 * d),
            "problem": a / (2 * b), "machine": b / c, "method": c / d}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--sequences", type=int, default=3)
    p.add_argument("--layers", type=int, default=1024)
    p.add_argument("--mpiexec", default="mpiexec", help="the launcher and its options")
    p.add_argument("--set", action="append", default=[], metavar="K=V")
    args = p.parse_args()
    sets = [x for kv in args.set for x in ("--set", kv)]
    rows = [sequence(args.mpiexec.split(), args.config, args.layers, sets)
            for _ in range(args.sequences)]
    keys = ["a", "b", "c", "d", "efficiency", "problem", "machine", "method"]
    print("| sequence | a: P=1, N [s] | b: P=1, N/2 | c: 2 x b at once | d: P=2, N | "
          "efficiency a/(2d) | problem a/(2b) | machine b/c | method c/d |")
    print("|" + "---|" * 9)
    for k, r in enumerate(rows, 1):
        print(f"| {k} | " + " | ".join(f"{r[key]:.3f}" for key in keys) + " |")
    print("| median | " + " | ".join(f"{statistics.median(r[key] for r in rows):.3f}"
                                     for key in keys) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
