"""The fault table: what a training job does when things go wrong, measured.

Runs a small peaks training (2 ranks) and, per scenario, injects the fault, measures the
seconds from the fault to the job's exit and its exit status, then checks what survived:
every checkpoint verifies, ``history.h5`` reads with contiguous steps, and ``--resume
latest`` continues. The kill -9 scenarios reuse one folder (each start resumes the last),
and a final resume to the end must give the loss history of an uninterrupted run, bit for
bit. Prints a Markdown table.

    python benchmarks/fault_table.py [--repeats 20] [--only kill9_rank,sigterm] [--json f]

ENOSPC needs root (a 400 KiB tmpfs is mounted); it is reported as skipped otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mgrit_nn.io.checkpoint import CheckpointError, open_checkpoint  # noqa: E402
from mgrit_nn.io.shards import orphans  # noqa: E402

MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
SMALL = ["--set", "data.n_train=48", "--set", "data.n_val=16", "--set", "data.batch_size=16",
         "--set", "model.layers=16", "--set", "model.width=4", "--quiet"]
STEPS = 300


def cmd(out: Path, *extra: str, steps: int = STEPS, every: int = 1) -> list[str]:
    return [MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "train", "configs/peaks.yaml",
            "--out", str(out), "--set", f"train.steps={steps}", "--set",
            f"checkpoint.every={every}", "--set", "checkpoint.keep=2", *SMALL, *extra]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for(pred, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while not pred() and time.time() < deadline:
        time.sleep(0.05)


def ranks_of(p: subprocess.Popen) -> list[int]:
    """The pids of the job's Python ranks (descendants of mpiexec running mgrit_nn)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    found, todo = [], [p.pid]
    while todo:
        pid = todo.pop()
        for c in kids.get(pid, []):
            todo.append(c)
            try:
                if b"mgrit_nn" in Path(f"/proc/{c}/cmdline").read_bytes():
                    found.append(c)
            except OSError:
                pass
    return sorted(found)


def newer_checkpoint(out: Path, since: float) -> bool:
    """Whether a checkpoint was written after ``since`` (training is under way)."""
    for c in (out / "checkpoints").glob("step_*.h5"):
        try:
            if c.stat().st_mtime > since:
                return True
        except OSError:                        # pruned meanwhile
            pass
    return False


def survived(out: Path) -> tuple[bool, str]:
    """Whether every checkpoint verifies and the history reads with steps 1..n."""
    bad = []
    for c in sorted((out / "checkpoints").glob("step_*.h5")):
        try:
            open_checkpoint(c).close()
        except CheckpointError as exc:
            bad.append(str(exc))
    try:
        with h5py.File(out / "history.h5", "r", locking=False) as f:
            steps = f["steps/step"][()]
        contiguous = list(steps) == list(range(1, len(steps) + 1))
    except OSError as exc:
        return False, f"history unreadable: {exc}"
    ok = not bad and contiguous
    n = len(list((out / "checkpoints").glob("step_*.h5")))
    return ok, (f"{n} checkpoints verify, history {len(steps)} rows" if ok
                else f"{bad} contiguous={contiguous}")


def mid_write(out: Path) -> bool:
    """Whether a kill left a checkpoint write unfinished: a ``.tmp`` main file, or a shard
    folder that no main file names (the write had not reached its main file)."""
    ckpts = out / "checkpoints"
    return any(ckpts.glob("step_*.h5.tmp")) or bool(orphans(ckpts))


def losses(out: Path) -> np.ndarray:
    with h5py.File(out / "history.h5", "r", locking=False) as f:
        return f["steps/loss"][()]


def resume_matches(out: Path, reference: np.ndarray) -> bool:
    """Resume for 10 more steps: the whole loss history must be the reference's first
    rows, bit for bit (a constant learning rate: the run's length changes nothing)."""
    done = len(losses(out))
    p = subprocess.run(cmd(out, "--resume", "latest", steps=min(done + 10, STEPS), every=STEPS),
                       cwd=ROOT, capture_output=True, text=True)
    got = losses(out)
    return p.returncode == 0 and np.array_equal(got, reference[:len(got)])


def kill_loop(work: Path, repeats: int, whole_job: bool, reference: np.ndarray) -> dict:
    out = work / ("kill9_job" if whole_job else "kill9_rank")
    secs, rcs, notes, ok_all, hits = [], [], [], True, 0
    for i in range(repeats):
        began = time.time()
        p = start(cmd(out, *(["--resume", "latest"] if i else [])))
        wait_for(lambda b=began: newer_checkpoint(out, b))
        time.sleep(random.uniform(0.5, 3.0))
        if p.poll() is not None:                 # trained to the end: nothing to kill
            notes.append(f"#{i}: the run had ended")
            break
        t0 = time.time()
        if whole_job:
            os.killpg(p.pid, signal.SIGKILL)
        else:
            victims = ranks_of(p)
            os.kill(random.choice(victims), signal.SIGKILL)
        try:
            p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            notes.append("hang")
        secs.append(time.time() - t0)
        rcs.append(p.returncode)
        wait_for(lambda q=p: not ranks_of(q), 10)
        hits += mid_write(out)
        ok, why = survived(out)
        ok_all &= ok
        if not ok:
            notes.append(f"#{i}: {why}")
    same = resume_matches(out, reference)
    return {"exit": sorted(set(rcs)), "seconds": secs, "survived": ok_all and same,
            "what": f"{len(secs)} kills ({hits} during a checkpoint write: a sharded one on "
                    f"2 ranks); every time all checkpoints verified and the history "
                    f"was contiguous: {ok_all}; then resumed: = uninterrupted run bitwise: "
                    f"{same}", "notes": notes}


def signal_case(work: Path, sig: int, reference: np.ndarray, twice: bool = False) -> dict:
    out = work / f"sig{sig}{'x2' if twice else ''}"
    p = start(cmd(out, every=5 if twice else STEPS))    # twice: no stop checkpoint
    began = time.time()
    wait_for(lambda: (out / "history.h5").exists() and
             (not twice or newer_checkpoint(out, began)))    # twice: resume from step 5
    time.sleep(2.0)
    t0 = time.time()
    p.send_signal(sig)
    if twice:
        time.sleep(0.1)
        p.send_signal(sig)
    try:
        p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        return {"exit": ["hang"], "seconds": [60.0], "survived": False, "what": "hang"}
    secs = time.time() - t0
    wait_for(lambda: not ranks_of(p), 10)
    ok, why = survived(out)
    same = resume_matches(out, reference)
    n_ck = len(list((out / "checkpoints").glob("step_*.h5")))
    return {"exit": [p.returncode], "seconds": [secs], "survived": ok and same,
            "what": f"{why}; stop checkpoint written: {n_ck > 0 and not twice}; then resumed: "
                    f"= uninterrupted run bitwise: {same}"}


def two_runs(work: Path) -> dict:
    out = work / "two"
    first = start(cmd(out, every=STEPS))
    wait_for(lambda: (out / "history.h5").exists())
    t0 = time.time()
    second = subprocess.run(cmd(out, "--resume", "latest"), cwd=ROOT, capture_output=True,
                            text=True)
    secs = time.time() - t0
    alive = first.poll() is None
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    ok, why = survived(out)
    line = second.stderr.strip().splitlines()[-1] if second.stderr.strip() else ""
    return {"exit": [second.returncode], "seconds": [secs], "survived": ok and alive,
            "what": f"second refused ({line[:70]}...); first went on: {alive}, then {why}"}


def disk_full(work: Path) -> dict:
    mnt = work / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        return {"exit": ["skipped"], "seconds": [], "survived": None,
                "what": "cannot mount a tmpfs (needs root)"}
    try:
        out = mnt / "run"
        t0 = time.time()
        p = subprocess.run(cmd(out, steps=40, every=5), cwd=ROOT, capture_output=True,
                           text=True)
        secs = time.time() - t0
        ok, why = survived(out)
        said = [ln for ln in p.stderr.splitlines() if ln.startswith("mgrit-nn: error:")]
        return {"exit": [p.returncode], "seconds": [secs], "survived": ok and len(said) == 1,
                "what": f"{len(said)} message; {why}; no .tmp left: "
                        f"{not list(out.rglob('*.tmp'))}",
                "notes": [said[0][:160]] if said else []}
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    random.seed(0)
    work = Path(tempfile.mkdtemp(prefix="faults_"))
    ref = work / "reference"
    subprocess.run(cmd(ref, every=STEPS), cwd=ROOT, check=True, capture_output=True)
    reference = losses(ref)
    cases = {
        "kill9_rank": lambda: kill_loop(work, a.repeats, False, reference),
        "kill9_job": lambda: kill_loop(work, a.repeats, True, reference),
        "sigterm": lambda: signal_case(work, signal.SIGTERM, reference),
        "sigusr1": lambda: signal_case(work, signal.SIGUSR1, reference),
        "sigint": lambda: signal_case(work, signal.SIGINT, reference),
        "sigint_twice": lambda: signal_case(work, signal.SIGINT, reference, twice=True),
        "two_runs_one_out": lambda: two_runs(work),
        "disk_full": lambda: disk_full(work),
    }
    rows = {}
    print(f"load average {os.getloadavg()[0]:.2f} at start", file=sys.stderr)
    print("| fault | exit status | seconds to exit (median / max; two runs, disk full: the "
          "whole command) | nothing lost | what |")
    print("|---|---|---|---|---|")
    for name, run in cases.items():
        if a.only and name not in a.only.split(","):
            continue
        r = rows[name] = run()
        s = r["seconds"]
        t = f"{np.median(s):.2f} / {max(s):.2f}" if s else "-"
        print(f"| {name} | {', '.join(map(str, r['exit']))} | {t} | {r['survived']} | "
              f"{r['what']} |", flush=True)
        for n in r.get("notes", []):
            print(f"|  |  |  |  | {n} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
