"""Issue 16's checks for a GPU machine, in one command (a lent machine's time is short).

    python3 benchmarks/gpu_session.py --out DIR [--wheels .whl] [--small]
        [--only gpu|cpu] [--ranks 1,2,4,8,16]

On a machine with PyTorch and CUDA but without MPI, ``--wheels`` names a folder of wheels
(mpi4py, mpich, pytest-mpi, pytest-timeout for that machine's Python), installed into the
running Python's environment first; the package itself is read from this checkout
(PYTHONPATH). Each step has its own time limit, writes its
output into DIR and goes on after a failure; a summary ends the run (also DIR/summary.json):

1. ``env``: the GPU (nvidia-smi), torch, MPI.
2. ``tests``: tests/mpi/test_gpu.py on one rank (the GPU agrees with the CPU; CUDA graphs
   of the MGRIT iterations train as eagerly).
3. ``gpu_b<B>_<graphs>``: ``mgrit-nn bench`` on the GPU, one rank, N = 1024, width 8,
   float32, batch 1000 and 4, ``runtime.graphs`` eager and cuda (the latter also times
   serial autograd recorded as one CUDA graph: the best serial baseline of the two).
4. ``model``: ``mgrit-nn model`` calibrated on 2 CPU ranks (one thread each), predicting
   1, 2, 4, 8, 16 ranks; ``cpu_p<P>``: the bench on P = 1, 2, 4, 8, 16 CPU ranks, the
   measurements to hold the predictions against.

``--small`` runs every step at toy sizes (a check of the script on any machine; the tests
run it with ``--only cpu``).

On the project's lent GPU machines (no package index there; at most 8 files come back),
after ``pip download`` of the four wheels for Python 3.12 into ``.whl`` (ignored by git):

    python3 benchmarks/gpu_session.py --wheels .whl --out /tmp/gs;
    tar czf $OUT/gs.tgz -C /tmp gs; cp /tmp/gs/summary.json $OUT/
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(name: str, cmd: list[str], out: Path, limit: int, env: dict) -> dict:
    """Runs ``cmd``; its stdout to DIR/name.out, stderr to DIR/name.err; the last stdout line
    parsed as JSON where it is one."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=limit)
        code, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = "timeout", exc.stdout or "", exc.stderr or ""
        stdout = stdout if isinstance(stdout, str) else stdout.decode(errors="replace")
        stderr = stderr if isinstance(stderr, str) else stderr.decode(errors="replace")
    (out / f"{name}.out").write_text(stdout)
    (out / f"{name}.err").write_text(stderr)
    lines = stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    seconds = time.perf_counter() - t0
    print(f"[{name}] exit {code} after {seconds:.0f} s", flush=True)
    if code != 0:
        print(stderr[-2000:], flush=True)
    return {"exit": code, "seconds": seconds, "json": result,
            "tail": (stdout + stderr)[-600:] if code != 0 else ""}


def _environment(wheels: str | None) -> tuple[dict, str, str]:
    """(environment, python, mpiexec) for the steps; ``wheels``: installed first into this
    Python's own environment (a machine that is thrown away after the session)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if wheels:                  # a failure is reported and the steps try what is there
        p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                            "--no-deps", "--no-compile", "--no-cache-dir", "--force-reinstall",
                            *map(str, sorted(Path(wheels).glob("*.whl")))])
        print(f"[wheels] pip install exit {p.returncode}", flush=True)
    bindir = str(Path(sys.prefix, "bin"))         # where the mpich wheel puts mpiexec
    env["PATH"] = os.pathsep.join((bindir, env.get("PATH", "")))
    mpiexec = shutil.which("mpiexec", path=env["PATH"]) or "mpiexec"
    return env, sys.executable, mpiexec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--wheels")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--only", choices=["gpu", "cpu"])
    ap.add_argument("--ranks", help="CPU rank counts (default 1,2,4,8,16; --small: 1,2)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env, python, mpiexec = _environment(a.wheels)
    layers, batches, ranks = (32, (16, 4), (1, 2)) if a.small else (1024, (1000, 4),
                                                                     (1, 2, 4, 8, 16))
    ranks = tuple(int(p) for p in a.ranks.split(",")) if a.ranks else ranks
    base = ["configs/peaks.yaml", "--set", f"model.layers={layers}", "--set",
            "runtime.dtype=float32", "--set", "bench.exact=false", "--set", "model.width=8"]
    mgrit = [python, "-m", "mgrit_nn"]
    res: dict = {}

    def step(name: str, cmd: list[str], limit: int) -> None:
        res[name] = _run(name, cmd, out, limit, env)
        (out / "summary.json").write_text(json.dumps(res, indent=1))    # after every step
    step("env", [python, "-c", (
        "import subprocess, torch; from mpi4py import MPI; print(torch.__version__, "
        "torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name() if "
        "torch.cuda.is_available() else None, MPI.Get_library_version().splitlines()[0]); "
        "subprocess.run(['nvidia-smi', '-L'])")], 60)
    if a.only != "cpu":
        step("tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--with-mpi",
                       "tests/mpi/test_gpu.py"], 240)
        for b in batches:
            for graphs in ("eager", "cuda"):
                step(f"gpu_b{b}_{graphs}", [
                    *mgrit, "bench", *base, "--set", f"data.n_train={b}", "--set",
                    "runtime.device=cuda", "--set", f"runtime.graphs={graphs}"], 150)
    if a.only != "gpu":
        threads = ["--set", "runtime.threads=1", "--set", "runtime.device=cpu",
                   "--set", f"data.n_train={batches[0]}"]
        step("model", [mpiexec, "-n", "2", *mgrit, "model", *base, *threads,
                       "--ranks", ",".join(map(str, ranks))], 240)
        for p in ranks:
            step(f"cpu_p{p}", [mpiexec, "-n", str(p), *mgrit, "bench", *base, *threads], 120)
    _summary(res)


def _summary(res: dict) -> None:
    keys = ("serial_grad_s", "serial_graphed_grad_s", "oneshot_grad_s", "ratio_oneshot",
            "ratio_oneshot_eager", "serial_kernels", "oneshot_launches", "oneshot_replays")
    for name, r in res.items():
        j = r["json"] if isinstance(r["json"], dict) else {}
        got = {k: j[k] for k in keys if k in j}
        if name == "model" and j:
            got = {"validation": j.get("validation"), "crossover_ranks": j.get(
                "crossover_ranks"), "predicted_oneshot_s": {
                    p["ranks"]: p["oneshot_s"] for p in j.get("predicted", [])}}
        print(f"{name}: exit {r['exit']}, {r['seconds']:.0f} s {json.dumps(got)}")


if __name__ == "__main__":
    main()
