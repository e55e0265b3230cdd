"""Failure rules (design §10): one clear message, non-zero exit, no hang."""

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


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("override,needle", [
    ("mgrit.cfactor=1", "mgrit.cfactor: must be >= 2"),
    ("model.depth=4", "unknown config key 'model.depth'"),
    ("model.layers=1", "model.layers:"),
])
def test_bad_config_one_message_every_rank_fails(n, override, needle):
    if n == 1 and override == "model.layers=1":
        pytest.skip("one layer is fine on one rank")
    p = mpirun(n, ["-m", "mgrit_nn", "check", "configs/peaks.yaml", "--set", override])
    assert p.returncode == 2, p.stderr
    assert p.stderr.count(needle) == 1, p.stderr
    assert "Traceback" not in p.stderr + p.stdout


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


def test_divergence_is_said_once(tmp_path):
    p = mpirun(2, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(tmp_path),
                   "--set", "train.lr=1e6", "--set", "train.optimizer=sgd", "--set",
                   "train.steps=12", "--set", "data.n_train=64", "--set", "data.n_val=0",
                   "--quiet"])
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("training diverges: the loss grew") == 1, p.stderr


def test_empty_out_is_one_message():
    p = mpirun(2, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", "", "--quiet"])
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("--out: the output folder is an empty path") == 1, p.stderr
    assert "Traceback" not in p.stderr + p.stdout


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


def test_divergence_is_one_message(tmp_path):
    """A NaN residual is seen by all ranks at once: rank 0 names iteration and level."""
    p = mpirun(2, ["-m", "mgrit_nn", "check", "configs/peaks.yaml", "--set", "model.T=1e300",
                   "--set", "data.n_train=8"])
    assert p.returncode == 1, p.stderr
    assert p.stderr.count("MGRIT forward: residual is") == 1, p.stderr
    assert "iteration 1" in p.stderr and "level 0" in p.stderr
    assert "Traceback" not in p.stderr


def test_train_cli_last_line_is_json(tmp_path):
    import json

    out = tmp_path / "run"
    p = mpirun(2, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--quiet", "--out", str(out),
                   "--set", "train.steps=3", "--set", "data.n_train=32", "--set",
                   "data.n_val=16", "--set", "model.layers=16"])
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("method", "ranks", "steps", "loss", "train_accuracy", "val_accuracy",
                "wall_time_s", "out"):
        assert key in result
    assert result["ranks"] == 2 and result["steps"] == 3 and result["out"] == str(out)
    assert json.loads((out / "result.json").read_text())["loss"] == result["loss"]
    assert "it/s" not in p.stderr                      # --quiet: no progress bar


def test_bench_reports_times_ratios_and_work():
    import json

    p = mpirun(2, ["-m", "mgrit_nn", "bench", "configs/peaks.yaml", "--set", "model.layers=32",
                   "--set", "data.n_train=40", "--set", "bench.repeats=2", "--set",
                   "bench.warmup=1", "--set", "mgrit.relax=F"])
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("serial_grad_s", "oneshot_grad_s", "mgrit_grad_s", "ratio_oneshot",
                "ratio_mgrit", "span_speedup_oneshot", "per_rank", "machine"):
        assert key in r
    assert r["ratio_oneshot"] == pytest.approx(r["oneshot_grad_s"] / r["serial_grad_s"])
    # 2 forward + 2 adjoint F-relaxation iterations: a few sweeps each, counted by the solver
    assert 2 < r["oneshot_fwd_sweeps"] < 10 and 2 < r["oneshot_adj_sweeps"] < 10
    assert r["mgrit_fwd_iters"] >= 2 and len(r["per_rank"]) == 2
    assert all(pr["rss_mb"] > 0 for pr in r["per_rank"])
