"""Restart through the command line where a process of its own is the point (issue 5):
signals, kill -9, a second live run. Resume and checkpoint refusals: tests/mpi/test_resume.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from test_failures import MPIEXEC, ROOT, mpirun

from mgrit_nn.io.checkpoint import open_checkpoint

SMALL = ["--set", "data.n_train=48", "--set", "data.n_val=16", "--set", "data.batch_size=16",
         "--set", "model.layers=16", "--set", "model.width=4", "--quiet"]


def train(n: int, out, *args: str, steps: int = 20) -> subprocess.CompletedProcess:
    p = mpirun(n, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(out),
                   "--set", f"train.steps={steps}", *SMALL, *args])
    assert p.returncode == 0, p.stderr
    return p


def losses(out) -> np.ndarray:
    with h5py.File(out / "history.h5", "r") as f:
        assert list(f["steps/step"][()]) == list(range(1, len(f["steps/step"]) + 1))
        return f["steps/loss"][()]


# resume on another number of ranks: test_shards.py (4 -> 4 bitwise, 3, 2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_sigterm_writes_checkpoint_and_exits_75(tmp_path, sig):
    """SIGTERM (SLURM) and SIGINT (Ctrl-C) both end the job after the step, with a
    checkpoint."""
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "train", "configs/peaks.yaml",
           "--out", str(out), "--set", "train.steps=1000000", "--set", "checkpoint.every=100000",
           *SMALL]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "history.h5").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    p.send_signal(sig)                      # mpiexec forwards it to every rank
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 75, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["stopped_by_signal"]
    ckpt = out / "checkpoints" / f"step_{result['steps']:08d}.h5"
    open_checkpoint(ckpt).close()


def test_second_interrupt_stops_at_once_and_keeps_the_history(tmp_path):
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "train", "configs/peaks.yaml",
           "--out", str(out), "--set", "train.steps=1000000", "--set", "model.layers=512",
           "--set", "data.n_train=20000", "--set", "data.n_val=0", "--quiet"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "history.h5").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=30)
    assert p.returncode != 75, stderr        # no stop checkpoint (the exit status is mpiexec's)
    assert time.time() - t0 < 10
    assert not list((out / "checkpoints").glob("*.h5")) if (out / "checkpoints").exists() \
        else True
    for _ in range(100):                     # the ranks may end just after mpiexec
        try:
            losses(out)                      # the rows written so far are readable
            break
        except BlockingIOError:
            time.sleep(0.1)
    else:
        losses(out)


def test_kill9_never_damages_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "train", "configs/peaks.yaml",
           "--out", str(out), "--set", "train.steps=1000000", "--set", "checkpoint.every=1",
           "--set", "checkpoint.keep=2", *SMALL]
    for delay in (2.0, 2.7, 3.3):
        p = subprocess.Popen(cmd + (["--resume", "latest"] if delay > 2.0 else []), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        deadline = time.time() + 60
        while not list((out / "checkpoints").glob("step_*.h5")) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(delay)
        os.killpg(p.pid, signal.SIGKILL)     # mpiexec and every rank, mid-whatever
        p.wait(timeout=30)
        files = sorted((out / "checkpoints").glob("step_*.h5"))
        assert files
        open_checkpoint(files[-1]).close()     # the newest complete one is loadable


def test_two_runs_on_one_out_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "train", "configs/peaks.yaml",
           "--out", str(out), "--set", "train.steps=1000000", "--set", "checkpoint.every=100000",
           *SMALL]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 60
    while not (out / "history.h5").exists() and time.time() < deadline:
        time.sleep(0.2)
    second = mpirun(2, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(out),
                        *SMALL, "--resume", "latest"])
    assert first.poll() is None                  # the first run goes on
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("is in use by the run of pid") == 1, second.stderr
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 75, stderr
    losses(out)                                  # its history is intact
    assert not (out / ".lock").exists()


