"""What a person sees of the commands: check's verdict and exit status, the first line of
every command, every --help saying what the command prints or writes, info on a history a
running job is writing, the default threads per rank."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
SMALL = ["--set", "data.n_train=64", "--set", "data.n_val=0", "--set", "model.layers=16"]


def mpirun(n: int, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "mgrit_nn", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def help_text(command: str) -> str:
    from mgrit_nn.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    return sub.choices[command].format_help()


# mgrit-nn check's verdict and exit status, train's and bench's JSON keys against their --help:
# tests/mpi/test_commands.py (the commands in the MPI part's own processes)


# -- runtime.threads: 0, the torch threads of a rank -------------------------------------------
class _Node:
    """A stand-in communicator: the affinity sets of the job's ranks on this node."""

    def __init__(self, sets: list[list[int]]) -> None:
        self.sets = sets

    def Split_type(self, kind):
        return self

    def allgather(self, mine):
        return self.sets

    def Free(self) -> None:
        pass


@pytest.mark.parametrize("mine,node,ranks,cpus,want", [
    ({0, 1}, [[0, 1], [0, 1]], 2, 2, 1),                 # 2 unbound ranks on 2 cores
    ({0, 1}, [[0, 1], [0, 1]], 2, 64, 1),                # a container's 2 cores of 64
    ({3}, [[3]], 1, 64, 1),                              # taskset -c 3: one core, one process
    (set(range(4)), [list(range(4))], 1, 4, 4),          # one rank alone: all it may use
    ({0, 1}, [[0, 1]] * 4, 4, 2, 1),                     # more ranks than cores: at least 1
    (set(range(8)), [list(range(8 * k, 8 * k + 8)) for k in range(4)], 4, 32, 8),  # bound
    (set(range(16)), [list(range(16))] * 2 + [list(range(16, 32))] * 2, 4, 32, 8),  # socket
])
def test_default_threads_never_oversubscribe(monkeypatch, mine, node, ranks, cpus, want):
    from types import SimpleNamespace

    from mgrit_nn import setup_run

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(mine), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(setup_run, "node_ranks", lambda: ranks)
    cfg = SimpleNamespace(runtime=SimpleNamespace(threads=0))
    assert setup_run._threads(cfg, _Node(node)) == want
    cfg.runtime.threads = 3                              # given: taken as it is
    assert setup_run._threads(cfg, _Node(node)) == 3


@pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset here")
def test_one_process_pinned_to_one_core_takes_one_thread():
    code = ("import torch; from mgrit_nn.setup_run import setup; "
            "setup(None, ['data.n_train=8', 'data.n_val=0']); print(torch.get_num_threads())")
    p = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1"]


# -- the first line of every command -----------------------------------------------------------
HEAVY = ("torch", "mpi4py", "numpy", "h5py", "matplotlib", "yaml")


@pytest.mark.parametrize("args,first", [
    (["train", "missing.yaml"], "mgrit-nn train: training missing.yaml on 1 rank: loading torch"),
    (["plot", "missing.h5"], "mgrit-nn plot: plotting missing.h5 (loading matplotlib) ..."),
    (["scaling", "missing.yaml", "--kind", "weak", "--ranks", "1,2"],
     "mgrit-nn scaling: preparing a weak scaling study of missing.yaml on 1,2 ranks ..."),
], ids=lambda a: a[0] if isinstance(a, list) else "")
def test_first_line_says_what_the_command_does_before_the_slow_imports(args, first):
    """Python's -X importtime lists every module when its import ends: the line comes
    before any of torch, mpi4py, numpy, h5py, matplotlib, yaml (seconds to load)."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "mgrit_nn", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    lines = p.stderr.splitlines()
    ours = [k for k, ln in enumerate(lines) if ln.startswith("mgrit-nn")]
    assert ours and lines[ours[0]].startswith(first), p.stderr[-2000:]
    before = {ln.split("|")[-1].strip() for ln in lines[:ours[0]]
              if ln.startswith("import time:")}
    assert not {m for m in before if m.split(".")[0] in HEAVY}
    after = {ln.split("|")[-1].strip().split(".")[0] for ln in lines[ours[0]:]}
    assert after & set(HEAVY), "the command loads nothing heavy: the test shows nothing"
    assert p.returncode == 2 and p.stdout == ""            # and fails with one message


def test_first_line_comes_from_rank_0_only_and_not_for_schema_job_or_info(tmp_path):
    p = mpirun(2, ["train", "missing.yaml"])
    assert p.stderr.count("mgrit-nn train: training missing.yaml on 2 ranks") == 1, p.stderr
    from mgrit_nn.config import Config
    from mgrit_nn.io.history import History

    History(tmp_path / "history.h5", Config().to_yaml(), 1, "serial").close()
    for args in (["schema"], ["job", "cpu"], ["info", str(tmp_path / "history.h5")]):
        p = subprocess.run([sys.executable, "-m", "mgrit_nn", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stderr == "" and p.stdout, p.stderr


# -- mgrit-nn info on the history of a running job --------------------------------------------
def test_info_and_plot_read_a_history_a_job_is_writing(tmp_path):
    """The writer (as mgrit-nn train's rank 0) keeps the file open, with HDF5's lock; a row it
    is appending (in some columns only) is left out."""
    import numpy as np

    from mgrit_nn.config import Config
    from mgrit_nn.io.history import History

    path = tmp_path / "history.h5"
    h = History(path, Config().to_yaml(), 2, "oneshot")
    try:
        for k in range(1, 4):
            h.append({"step": k, "epoch": 0, "loss": 1.0 / k, "val_accuracy": 0.1 * k}, [1e-3],
                     [1e-4], np.full((2, 3), 0.5))
        p = subprocess.run([sys.executable, "-m", "mgrit_nn", "info", str(path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "  3 steps recorded\n" in p.stdout and "last: step=3, loss=0.3333" in p.stdout
        assert "best validation accuracy 0.3000 at step 3" in p.stdout
        h.f["steps/step"].resize(4, axis=0)         # the writer is half-way through row 4
        h.f["steps/step"][3] = 4
        h.f.flush()
        p = subprocess.run([sys.executable, "-m", "mgrit_nn", "info", str(path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "3 steps recorded (and one being written)" in p.stdout
        assert "last: step=3, loss=0.3333" in p.stdout and "1.50 1.50" in p.stdout
        p = subprocess.run([sys.executable, "-m", "mgrit_nn", "plot", str(path), "--out",
                            str(tmp_path / "plots")], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        assert (tmp_path / "plots" / "training.png").stat().st_size > 10_000
    finally:
        h.close()


# -- every --help says what the command prints or writes ---------------------------------------
HELP_WORDS = {
    "check": ["Prints", "forward solve", "adjoint solve", "gradient", "serial network",
              "stderr", "PASS", "FAIL", "JSON", "Exit status 1"],
    "train": ["Writes", "history.h5", "checkpoints", "result.json", "config.yaml", "JSON",
              "75", "warm_store_bytes"],
    "bench": ["Prints", "JSON", "serial_grad_s", "oneshot_grad_s", "mgrit_grad_s",
              "span_speedup_oneshot", "machine"],
    "init": ["Writes", "step_00000000.h5", "JSON"],
    "model": ["Prints", "JSON", "calibrates", "virtual ranks", "validation", "crossover_ranks"],
    "info": ["Prints", "history", "checkpoint", "steps recorded", "per rank"],
    "schema": ["Prints", "config key", "Markdown"],
    "job": ["Prints", "SLURM", "--var"],
    "scaling": ["Writes", "study.json", "scaling_config.yaml", "job.sbatch", "bench.json",
                "history.h5", "JSON"],
    "report": ["Writes", "report.md", "runtime.png", "speedup.png", "JSON"],
    "plot": ["Writes", "training.png", "residuals.png", "timing.png", "JSON"],
}


@pytest.mark.parametrize("command", sorted(HELP_WORDS))
def test_every_help_says_what_the_command_gives(command):
    text = help_text(command)
    missing = [w for w in HELP_WORDS[command] if w not in text]
    assert not missing, f"mgrit-nn {command} --help lacks {missing}:\n{text}"


def test_every_command_has_its_help_checked():
    from mgrit_nn.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(HELP_WORDS)


def test_job_help_lists_every_template_setting():
    import re

    from mgrit_nn.commands.job import DEFAULTS

    text = help_text("job")
    used = {m for t in (ROOT / "jobs").glob("*.sbatch")
            for m in re.findall(r"\{\{([A-Z_][A-Z0-9_]*)\}\}", t.read_text())}
    assert used and not [v for v in sorted(used | set(DEFAULTS)) if f"{v}=" not in text]
