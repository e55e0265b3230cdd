"""mgrit-nn scaling: derived configs and jobs, a tiny local study, failures, then the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mgrit_nn.commands.scaling import (
    StudyError,
    launcher_command,
    layers_for,
    parse_ranks,
    prepare,
    threads_per_rank,
)
from mgrit_nn.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PEAKS = str(ROOT / "configs" / "peaks.yaml")
TINY = ["--set", "model.layers=8", "--set", "data.n_train=32", "--set", "data.n_val=16",
        "--set", "bench.repeats=1", "--set", "bench.warmup=1", "--set", "bench.exact=false",
        "--set", "train.eval_every=2"]


def cli(*args: str, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgrit_nn", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=env)


def report(capsys, *args: str) -> tuple[int, str]:
    """``mgrit-nn report ARGS`` in this process (it starts no MPI): exit status, stdout."""
    from mgrit_nn.cli import main

    capsys.readouterr()
    code = main(["report", *args])
    return code, capsys.readouterr().out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_ranks_and_layers():
    assert parse_ranks("4,1,2,2") == [1, 2, 4]
    with pytest.raises(StudyError, match="comma-separated"):
        parse_ranks("1,two")
    assert layers_for("strong", [1, 2, 4], 64, None) == {1: 64, 2: 64, 4: 64}
    assert layers_for("weak", [2, 4, 8], 64, None) == {2: 64, 4: 128, 8: 256}
    assert layers_for("weak", [1, 2], 64, 16) == {1: 16, 2: 32}
    with pytest.raises(StudyError, match="for weak scaling"):
        layers_for("strong", [1, 2], 64, 16)


def test_launcher_command():
    assert launcher_command("mpirun --oversubscribe -n {n}", 4) == \
        ["mpirun", "--oversubscribe", "-n", "4"]
    assert launcher_command("srun --mpi=pmix", 3) == ["srun", "--mpi=pmix", "-n", "3"]
    exe = launcher_command(None, 2)
    assert Path(exe[0]).name == "mpiexec" and exe[1:] == ["-n", "2"]


def test_weak_study_folders_configs_and_jobs(tmp_path):
    study = tmp_path / "weak"
    points = prepare(PEAKS, "weak", [1, 2, 4], study, layers_per_rank=16,
                     sets=["data.n_train=100"], steps=7, job_vars={"ACCOUNT": "proj"},
                     ranks_per_node=2)
    assert [(p.ranks, p.layers) for p in points] == [(1, 16), (2, 32), (4, 64)]
    for p in points:
        cfg = yaml.safe_load(p.config.read_text())
        assert cfg["model"]["layers"] == p.layers and cfg["train"]["steps"] == 7
        assert cfg["data"]["n_train"] == 100 and cfg["model"]["width"] == 8   # kept
        job = (p.folder / "job.sbatch").read_text()
        assert f"#SBATCH --ntasks={p.ranks}\n" in job and "#SBATCH --account=proj" in job
        assert f"#SBATCH --nodes={(p.ranks + 1) // 2}\n" in job
        assert f"CONFIG='{p.config}'" in job and f"OUT='{p.folder}'" in job
        assert "BENCH='1'" in job
        assert subprocess.run(["bash", "-n", str(p.folder / "job.sbatch")]).returncode == 0
    manifest = json.loads((study / "study.json").read_text())
    assert manifest["kind"] == "weak" and manifest["ranks"] == [1, 2, 4]
    assert {e["status"] for e in manifest["runs"].values()} == {"generated"}
    with pytest.raises(StudyError, match="already holds a study"):
        prepare(PEAKS, "weak", [1, 2], study)
    prepare(PEAKS, "strong", [1, 2], study, force=True)
    assert sorted(d.name for d in study.glob("ranks_*")) == ["ranks_0001", "ranks_0002"]


def test_every_run_of_a_study_has_the_same_threads_per_rank(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert threads_per_rank([1, 2, 4], True, {}) == 2            # 8 cores / the largest P
    assert threads_per_rank([1, 16], True, {}) == 1              # at least one
    assert threads_per_rank([1, 2, 4], False, {}) == 1           # jobs: CPUS_PER_TASK's default
    assert threads_per_rank([1, 2, 4], False, {"CPUS_PER_TASK": "4"}) == 4
    with pytest.raises(StudyError, match="CPUS_PER_TASK"):
        threads_per_rank([1, 2], False, {"CPUS_PER_TASK": "0"})
    points = prepare(PEAKS, "strong", [1, 2, 4], tmp_path / "a", threads=2)
    assert [yaml.safe_load(p.config.read_text())["runtime"]["threads"] for p in points] == \
        [2, 2, 2]
    assert json.loads((tmp_path / "a" / "study.json").read_text())["threads"] == 2
    # the config's own (here from --set) wins, for every run
    points = prepare(PEAKS, "weak", [1, 2], tmp_path / "b", sets=["runtime.threads=3"],
                     threads=2)
    assert [yaml.safe_load(p.config.read_text())["runtime"]["threads"] for p in points] == [3, 3]
    assert json.loads((tmp_path / "b" / "study.json").read_text())["threads"] == 3


def test_impossible_rank_count_is_one_message_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="9 ranks, N = 4: model.layers"):
        prepare(PEAKS, "strong", [1, 9], tmp_path / "s", sets=["model.layers=4"])
    assert not (tmp_path / "s").exists()
    p = cli("scaling", PEAKS, "--kind", "strong", "--ranks", "1,9", "--set", "model.layers=4",
            "--out", str(tmp_path / "s"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[1:] == [                  # after the first line
        "mgrit-nn scaling: config error: 9 ranks, N = 4: model.layers: 9 ranks need at least "
        "8 layers (N+1 = 5 points, one or more per rank)"]


def test_submit_without_sbatch_is_one_line(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    if shutil.which("sbatch", path=env["PATH"]):
        pytest.skip("sbatch is installed here")
    p = cli("scaling", PEAKS, "--kind", "strong", "--ranks", "1,2", "--submit", "--out",
            str(tmp_path / "s"), env=env)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith(
        "mgrit-nn scaling: sbatch not found on PATH")
    assert (tmp_path / "s" / "ranks_0002" / "job.sbatch").is_file()


FAKE = """#!/usr/bin/env bash
# a launcher that fails like mgrit-nn does, or hangs
if [ "$1" = hang ]; then sleep 60; fi
echo "mgrit-nn: rank 1/$2 failed: RuntimeError: boom on purpose" >&2
exit 1
"""


@pytest.mark.parametrize("mode,needle", [("fail", "exit 1: mgrit-nn: rank 1/2 failed"),
                                         ("hang", "exit 124")])
def test_failing_or_hanging_runs_are_reported_and_exit_nonzero(tmp_path, capsys, mode, needle):
    fake = tmp_path / "fake.sh"
    fake.write_text(FAKE)
    study = tmp_path / "s"
    t0 = time.time()
    p = cli("scaling", PEAKS, "--kind", "strong", "--ranks", "2", "--local", "--out",
            str(study), "--launcher", f"bash {fake} {mode} {{n}}", "--timeout", "2", *TINY,
            timeout=120)
    assert time.time() - t0 < 60
    assert p.returncode == 1, p.stderr
    assert needle in p.stderr and "Traceback" not in p.stderr
    status = json.loads((study / "study.json").read_text())["runs"]["2"]["status"]
    assert status.startswith("failed:") and needle in status
    code, _ = report(capsys, str(study))       # a study without any data still reports
    assert code == 0
    table = (study / "report.md").read_text()
    assert "| 2 | 8 | – | failed: bench exit" in table


def test_local_strong_study_then_report(tmp_path, capsys):
    """The whole path on 1 and 2 ranks, a few steps: files, table, plots."""
    study = tmp_path / "peaks_strong"
    p = cli("scaling", PEAKS, "--kind", "strong", "--ranks", "1,2", "--local", "--steps", "3",
            "--out", str(study), *TINY)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["failed"] == []
    threads = max(1, len(os.sched_getaffinity(0)) // 2)     # the cores here / the largest P
    for n in (1, 2):
        d = study / f"ranks_{n:04d}"
        bench = json.loads((d / "bench.json").read_text())
        assert bench["ranks"] == n and bench["layers"] == 8 and bench["oneshot_grad_s"] > 0
        assert bench["machine"]["threads"] == threads           # the same on 1 and 2 ranks
        assert json.loads((d / "result.json").read_text())["steps"] == 3
        assert (d / "history.h5").is_file() and "$ " in (d / "run.log").read_text()
    code, out = report(capsys, str(study))
    assert code == 0
    written = {Path(w).name for w in json.loads(out.strip().splitlines()[-1])["written"]}
    assert {"runtime.png", "speedup.png", "efficiency.png", "training.png", "residuals.png",
            "timing.png", "report.md"} <= written
    assert png_size(study / "runtime.png") == (768, 528)
    assert png_size(study / "training.png") == (1344, 528)
    assert all((study / w).stat().st_size > 10_000 for w in written if w.endswith(".png"))
    md = (study / "report.md").read_text()
    gradient, training = md.split("## Training")
    for n in (1, 2):
        assert f"\n| {n} | 8 | {threads} | ok |" in gradient
        assert f"\n| {n} | 8 | {threads} | ok | 3 |" in training
    assert "| 1 | 1 | 1 |" in gradient.split("\n| 1 | 8 |")[1].split("\n")[0]   # P_ref row
    assert f"Threads per rank: {threads} at every rank count" in md
    # a rank count whose run is gone: the report says so instead of failing
    shutil.rmtree(study / "ranks_0002")
    code, _ = report(capsys, str(study), "--out", str(tmp_path / "again"))
    assert code == 0
    md = (tmp_path / "again" / "report.md").read_text()
    assert "| 2 | 8 | – | no bench.json; no history.h5 |" in md


def test_terminating_the_driver_stops_the_running_ranks(tmp_path):
    """kill (or SLURM) on mgrit-nn scaling must not leave its mpiexec and ranks behind."""
    import signal

    fake = tmp_path / "fake.sh"
    fake.write_text("#!/usr/bin/env bash\necho $$ > \"$1\"\nsleep 60\n")
    pid_file = tmp_path / "launcher.pid"
    proc = subprocess.Popen([sys.executable, "-m", "mgrit_nn", "scaling", PEAKS, "--kind",
                             "strong", "--ranks", "1", "--local", "--out", str(tmp_path / "s"),
                             "--launcher", f"bash {fake} {pid_file}", *TINY], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    launcher = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(launcher, 0)
