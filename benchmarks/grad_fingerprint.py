"""Fingerprint of MGRIT gradients, for behaviour-preserving changes to the solver core.

For several network and solver variants (Euler F / FCF, cfactor 3, F-cycles with skip, two
levels, Verlet, conv), computes two consecutive one-shot gradients (warm-started) and two
exact MGRIT gradients on one batch, float64, and prints one SHA-256 per variant, method and
step over every rank's gradients (rank 0 prints). Identical lines from two commits mean
bitwise-identical gradients. Run it on 1-4 ranks, from the root of the tree to test:

    cd TREE && mpiexec -n P python /path/to/benchmarks/grad_fingerprint.py > fp_P.txt
"""

from __future__ import annotations

import hashlib
import os
import sys

sys.path.insert(0, os.getcwd())              # the tree to test, not this file's

from mpi4py import MPI  # noqa: E402

from mgrit_nn.commands.bench import bench_batch  # noqa: E402
from mgrit_nn.methods.base import Batch  # noqa: E402
from mgrit_nn.methods.layer_parallel import LayerParallelMethod  # noqa: E402
from mgrit_nn.setup_run import setup  # noqa: E402

DENSE = ("configs/peaks.yaml", ["model.width=8"])
VARIANTS = {
    "euler-FCF": (DENSE, ["model.layers=32", "data.n_train=50"]),
    "euler-F": (DENSE, ["model.layers=32", "data.n_train=50", "mgrit.relax=F"]),
    "cfactor3": (DENSE, ["model.layers=40", "data.n_train=30", "mgrit.cfactor=3"]),
    "fcycle-skip": (DENSE, ["model.layers=48", "data.n_train=30", "mgrit.cycle=F",
                            "mgrit.skip=true"]),
    "two-levels": (DENSE, ["model.layers=48", "data.n_train=30", "mgrit.levels=2"]),
    "verlet": (DENSE, ["model.layers=32", "data.n_train=50", "model.step=verlet"]),
    "conv": (("configs/digits_conv.yaml", []), ["model.layers=16", "data.n_train=20",
                                                "data.batch_size=20"]),
}


def main() -> None:
    world = MPI.COMM_WORLD
    for name, ((config, base), extra) in VARIANTS.items():
        run = setup(config, base + extra + ["runtime.dtype=float64", "runtime.threads=1",
                                            "data.n_val=0"], world)
        x, y, idx = bench_batch(run)
        for exact in (False, True):
            method = LayerParallelMethod(run, exact=exact)
            for step in range(2):
                method.step(Batch(x, y, idx))
                mine = b"".join(p.grad.detach().cpu().numpy().tobytes()
                                for p in method.net.local_parameters())
                every = world.gather(mine, root=0)
                if world.Get_rank() == 0:
                    digest = hashlib.sha256(b"".join(every)).hexdigest()[:16]
                    print(name, "mgrit" if exact else "oneshot", step, digest, flush=True)


if __name__ == "__main__":
    main()
