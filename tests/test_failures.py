"""Failure rules (design §10): one clear message, non-zero exit, no hang; here what needs
processes of its own (a usage error before MPI starts, a rank that aborts the job). Config
errors, divergence and the commands' JSON: tests/mpi/test_commands.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
TIMEOUT = 90


def mpirun(n: int, args: list[str], cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MGRIT_NN_TRACEBACK", None)
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("args,needle", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["train"], "the following arguments are required: config"),
    (["train", "configs/peaks.yaml", "--resume"], "expected one argument"),
], ids=["command", "no-config", "flag"])
def test_usage_errors_are_one_line_from_one_rank(args, needle):
    p = mpirun(2, ["-m", "mgrit_nn", *args])
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], p.stderr


def test_words_that_say_what_is_wrong(tmp_path):
    p = mpirun(1, ["-m", "mgrit_nn", "check", str(tmp_path)])
    assert p.returncode == 2 and "is a directory" in p.stderr, p.stderr
    with h5py.File(tmp_path / "history.h5", "w") as f:
        f.create_group("steps")
    p = mpirun(2, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(tmp_path / "o"),
                   "--resume", str(tmp_path / "history.h5")])
    assert p.returncode == 2 and p.stderr.count("is a history file, not a checkpoint") == 1


def test_failing_rank_aborts_job_without_hang(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(
        "from mgrit_nn.runtime import abort_on_error, world\n"
        "with abort_on_error():\n"
        "    if world().Get_rank() == 1:\n"
        "        raise RuntimeError('boom on purpose')\n"
        "    world().Barrier()\n")
    p = mpirun(3, [str(script)])           # ranks 0 and 2 would wait forever in Barrier
    assert p.returncode != 0
    assert p.stderr.count("rank 1/3 failed: RuntimeError: boom on purpose") == 1, p.stderr
    assert "Traceback" not in p.stderr
