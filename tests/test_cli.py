"""What a person sees of the commands: check's verdict and exit status, the first line of
every command, every --help saying what the command prints or writes, info on a history a
running job is writing, the default threads per rank."""

from __future__ import annotations

import json
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


def last_json(p: subprocess.CompletedProcess) -> dict:
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- mgrit-nn check: a verdict against stated tolerances --------------------------------------
def test_check_passes_with_a_verdict_a_person_reads():
    p = mpirun(2, ["check", "configs/peaks.yaml", *SMALL])
    assert p.returncode == 0, p.stderr
    out = last_json(p)
    for key in ("fwd_iters", "fwd_residuals", "state_rel_err", "adj_iters", "adj_residuals",
                "grad_rel_err", "grad_max_rel_err", "loss_serial", "loss_mgrit"):
        assert key in out
    assert out["passed"] and out["fwd_converged"] and out["adj_converged"]
    assert out["state_ok"] and out["grad_ok"]
    assert out["fwd_tol"] == out["adj_tol"] == 1e-10 and out["err_tol"] == pytest.approx(1.49e-8,
                                                                                      rel=1e-2)
    lines = p.stderr.splitlines()
    fwd = next(ln for ln in lines if ln.strip().startswith("forward:"))
    assert f"{out['fwd_iters']} iterations" in fwd and "<= 1e-10 OK" in fwd
    assert "state error" in fwd and fwd.endswith("<= 1.5e-08 OK")
    assert any(ln.strip().startswith("adjoint:") and ln.endswith("<= 1e-10 OK") for ln in lines)
    assert any(ln.strip().startswith("gradient:") and ln.endswith("OK") for ln in lines)
    assert "mgrit-nn check: PASS" in lines


@pytest.mark.parametrize("cap,failed", [("mgrit.max_iter=1", "forward, state, adjoint, gradient"),
                                        ("adjoint.max_iter=1", "adjoint, gradient")])
def test_check_fails_when_a_solve_stops_short(cap, failed):
    p = mpirun(2, ["check", "configs/peaks.yaml", *SMALL, "--set", cap])
    assert p.returncode == 1, p.stderr
    out = last_json(p)                          # the JSON line is still the last stdout line
    assert out["passed"] is False and out["grad_ok"] is False and out["adj_converged"] is False
    assert out["fwd_converged"] is (cap.startswith("adjoint"))
    assert f"mgrit-nn check: FAIL ({failed})" in p.stderr
    assert "(stopped at max_iter 1)" in p.stderr and "Traceback" not in p.stderr
    assert "BAD TERMINATION" not in p.stdout + p.stderr      # every rank exits with 1 itself


def test_check_in_float32_uses_a_tolerance_float32_reaches():
    """tol 1e-10 is below float32's rounding: the check raises it to 10 eps |u_C|, says so, and
    stops there instead of running all max_iter iterations."""
    p = mpirun(2, ["check", "configs/peaks.yaml", *SMALL, "--set", "runtime.dtype=float32"])
    assert p.returncode == 0, p.stderr
    out = last_json(p)
    assert out["passed"] and out["fwd_iters"] < 30 and out["adj_iters"] < 30
    assert out["fwd_tol"] > 1e-10 and out["adj_tol"] > 1e-10
    assert out["fwd_residuals"][-1] <= out["fwd_tol"] < out["fwd_residuals"][0]
    assert out["err_tol"] == pytest.approx(3.45e-4, rel=1e-2)           # sqrt(eps)
    assert p.stderr.count("raised to the float32 rounding floor") == 2


def test_check_keeps_the_float64_tolerance_unless_it_is_below_round_off():
    p = mpirun(2, ["check", "configs/peaks.yaml", *SMALL, "--set", "mgrit.tol=1e-300"])
    assert p.returncode == 0, p.stderr
    out = last_json(p)
    assert 1e-300 < out["fwd_tol"] < 1e-11 and out["passed"]
    assert "tol 1e-300 raised to the float64 rounding floor" in p.stderr


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
