"""The hot path's CPU tanh, torch's against 2 sigmoid(2z) - 1, in one process, interleaved.

    python benchmarks/tanh_form.py CONFIG [--set k=v ...] --batches 4,8,16,32,64,256
        [--repeats 40]

For each batch size, times the one-shot gradient (one rank, as ``mgrit-nn bench`` runs it:
fixed iteration counts, the same batch) with the steps' tanh_ forced to torch's tanh and to
the sigmoid form (``mgrit_nn.model.steps.SIGMOID_TANH_MIN`` set to never / always), the two
alternating gradient by gradient so that the machine's slow and fast spells fall on both.
Prints one JSON object per batch size: both medians, the median of the pairwise ratios
(sigmoid / torch) and their quartiles. ``SIGMOID_TANH_MIN`` (elements per position) is
chosen where this ratio falls below 1 (docs/performance.md, "tanh on the CPU").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from mpi4py import MPI

from mgrit_nn.commands.bench import bench_batch
from mgrit_nn.methods.base import Batch
from mgrit_nn.methods.layer_parallel import LayerParallelMethod
from mgrit_nn.model import steps
from mgrit_nn.setup_run import setup

NEVER, ALWAYS = 2**62, 0


def compare(config: str, sets: list[str], batch: int, repeats: int) -> dict:
    run = setup(config, sets + [f"data.batch_size={batch}"], MPI.COMM_WORLD)
    x, y, idx = bench_batch(run)
    method = LayerParallelMethod(run, exact=False, fixed_iters=True)

    def grad() -> None:
        method.step(Batch(x, y, idx))
    times: dict[int, list[float]] = {NEVER: [], ALWAYS: []}
    saved = steps.SIGMOID_TANH_MIN
    try:
        for _ in range(3):
            grad()
        for _ in range(repeats):
            for form in (ALWAYS, NEVER):
                steps.SIGMOID_TANH_MIN = form
                t0 = time.perf_counter()
                grad()
                times[form].append(time.perf_counter() - t0)
    finally:
        steps.SIGMOID_TANH_MIN = saved
    ratios = sorted(a / b for a, b in zip(times[ALWAYS], times[NEVER], strict=True))
    q = len(ratios) // 4
    return {"batch": batch, "width": run.cfg.model.width, "layers": run.cfg.model.layers,
            "dtype": run.cfg.runtime.dtype, "sigmoid_s": statistics.median(times[ALWAYS]),
            "torch_tanh_s": statistics.median(times[NEVER]),
            "ratio": statistics.median(ratios), "ratio_quartiles": [ratios[q], ratios[-1 - q]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--batches", default="4,8,16,32,64,256")
    p.add_argument("--repeats", type=int, default=40)
    a = p.parse_args()
    for batch in (int(b) for b in a.batches.split(",")):
        print(json.dumps(compare(a.config, a.sets, batch, a.repeats)), flush=True)


if __name__ == "__main__":
    main()
