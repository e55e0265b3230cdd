"""``mgrit-nn bench`` under ``torch.profiler``: the operators where the time goes.

    python benchmarks/profile_bench.py CONFIG [--set k=v ...] [--rows 25]

Runs the bench on one rank (all its arguments pass through) and prints the operator
table sorted by self CPU time (with CUDA time on a GPU). The serial reference runs in
the same process, so operators with thousands of small calls (``addmm``, ``tanh``,
``tanh_backward``) are mostly autograd's; the MGRIT path issues few, large calls.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mgrit_nn.cli import main as cli_main


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=25)
    args, rest = p.parse_known_args()
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        rc = cli_main(["bench", *rest])
    if rc:
        sys.exit(rc)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
