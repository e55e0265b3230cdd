"""Fingerprint of a training run, for behaviour-preserving refactors.

Runs the four reference configs for a few steps and prints, per run, a SHA-256 of
every history column that does not measure time and of every checkpoint dataset.
Compare the output of two commits: identical lines mean bitwise-identical runs.

    python benchmarks/fingerprint.py [--steps 20] [--out /tmp/fp] > fp_<commit>.txt
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

RUNS = (("peaks_oneshot", "configs/peaks.yaml", 4, []),
        ("levelset_penalty", "configs/levelset_penalty.yaml", 2, []),
        ("swissroll_parpas", "configs/swissroll_parpas.yaml", 2, []),
        ("digits_local_critic", "configs/digits_local_critic.yaml", 2, []))
TIMED = ("step_time_s", "prediction_s", "shallow_s")
# torch's global RNG state differs between two runs of the same commit (nothing the runs
# compute draws from it); it is not compared.
UNSEEDED = ("rng/torch",)


def digest(a) -> str:
    a = np.asarray(a)
    if a.dtype == object:                      # variable-length rows
        return hashlib.sha256(b"".join(np.asarray(r).tobytes() for r in a)).hexdigest()[:16]
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


def datasets(f: h5py.File) -> dict[str, str]:
    out: dict[str, str] = {}
    f.visititems(lambda name, obj: out.__setitem__(name, digest(obj[()]))
                 if isinstance(obj, h5py.Dataset) else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="/tmp/fingerprint")
    ap.add_argument("--only", default="", help="comma-separated run names")
    a = ap.parse_args()
    for name, cfg, ranks, extra in RUNS:
        if a.only and name not in a.only.split(","):
            continue
        out = Path(a.out) / name
        subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "mgrit_nn", "train", cfg,
               "--out", str(out), "--quiet", "--set", f"train.steps={a.steps}", *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with h5py.File(out / "history.h5") as f:
            for c in sorted(f["steps"]):
                if c not in TIMED:
                    print(f"{name} history {c} {digest(f['steps'][c][()])}")
        ckpt = sorted((out / "checkpoints").glob("step_*.h5"))[-1]
        with h5py.File(ckpt) as f:
            for k, v in sorted(datasets(f).items()):
                timed = k.startswith("history/timing/") or k.split("/")[-1] in TIMED
                if k not in UNSEEDED and not timed:
                    print(f"{name} checkpoint {k} {v}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
