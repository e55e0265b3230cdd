"""How far lambda moves during a penalty/al run (issue 15): |lambda_t - lambda_1| / |lambda_1|
over the training set, per checkpointed step, all interfaces together.

    mpiexec -n 2 mgrit-nn train configs/levelset_penalty.yaml --out /tmp/run \\
        --set checkpoint.every=1 --set checkpoint.keep=0
    python benchmarks/lambda_drift.py /tmp/run [--steps 2,10,100,250,300]

Reads ``penalty/lambda`` of every ``OUT/checkpoints/step_*.h5``. With the paper's # = B n
scaling of the lambda step (``penalty.literal: [scaling]``) the step per iteration is
about lr_lambda * 2 beta / (n B): lambda hardly leaves the interface states of the
initial network, so the initialization decides what the stages learn to match.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np


def drift(out: Path) -> dict[int, float]:
    """step -> |lambda_step - lambda_first| / |lambda_first| (Frobenius, every interface)."""
    files = sorted((out / "checkpoints").glob("step_*.h5"))
    if not files:
        raise SystemExit(f"lambda_drift: no checkpoints in {out / 'checkpoints'}")
    first, out = None, {}
    for f in files:           # step order: the names are zero-padded; one lambda in memory
        with h5py.File(f) as h:
            if "penalty/lambda" not in h or h["penalty/lambda"].size == 0:
                raise SystemExit(f"lambda_drift: {f} has no penalty/lambda (K = 1, or not "
                                 "a penalty/al run)")
            lam = np.asarray(h["penalty/lambda"][()])
            first = lam if first is None else first
            out[int(h["penalty/t"][()])] = float(np.linalg.norm(lam - first)
                                                 / np.linalg.norm(first))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the run's --out folder")
    p.add_argument("--steps", default="", help="only these steps (default: every one)")
    args = p.parse_args()
    d = drift(args.out)
    want = [int(s) for s in args.steps.split(",")] if args.steps else sorted(d)
    print("| step | lambda drift |\n|---|---|")
    for t in want:
        if t in d:
            print(f"| {t} | {d[t]:.2e} |")


if __name__ == "__main__":
    main()
