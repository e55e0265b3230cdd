"""``mgrit-nn scaling``: the job set of a strong or weak scaling study, run here or submitted.

One study folder; per rank count P a folder ``ranks_PPPP`` with the derived config
(``scaling_config.yaml``), the SLURM job (``job.sbatch``) and, once run, ``bench.json`` (the
last line of ``mgrit-nn bench``), ``history.h5``, ``result.json``, ``checkpoints/`` and
the log. ``study.json`` records what was asked and how every run ended; ``mgrit-nn
report`` reads it.

strong: every P trains the N of the config. weak: N = layers_per_rank x P. Every run of a
study has the same torch threads per rank (``runtime.threads`` in every derived config, unless
the config or ``--set`` gives one): here (``--local``) the cores this process may use over the
largest P, in jobs the template's ``CPUS_PER_TASK``; so the times change with P only.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from mgrit_nn.commands.job import TemplateError, render_kind
from mgrit_nn.config import ConfigError, build_config, load_config, parse_override, validate

STUDY_FILE = "study.json"
COMPUTED_VARS = ("CONFIG", "OUT", "BENCH", "NTASKS", "NODES", "NTASKS_PER_NODE", "RUNS")


class StudyError(RuntimeError):
    """A problem with the study as asked (printed as one line, exit status 2)."""


@dataclass
class Point:
    """One rank count of a study."""

    ranks: int
    layers: int
    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "scaling_config.yaml"      # train writes its own config.yaml


def rank_folder(study: Path, ranks: int) -> Path:
    return study / f"ranks_{ranks:04d}"


def parse_ranks(text: str) -> list[int]:
    """``1,2,4,8`` -> [1, 2, 4, 8] (sorted, distinct, positive)."""
    try:
        ranks = sorted({int(r) for r in text.split(",") if r.strip()})
    except ValueError:
        raise StudyError(f"--ranks {text!r}: expected comma-separated integers, e.g. 1,2,4,8") \
            from None
    if not ranks or ranks[0] < 1:
        raise StudyError(f"--ranks {text!r}: expected positive rank counts")
    return ranks


def layers_for(kind: str, ranks: list[int], config_layers: int,
               layers_per_rank: int | None) -> dict[int, int]:
    """N for every P: strong = N of the config; weak = layers_per_rank x P."""
    if kind == "strong":
        if layers_per_rank is not None:
            raise StudyError("--layers-per-rank is for weak scaling (strong keeps N fixed)")
        return {p: config_layers for p in ranks}
    m = layers_per_rank if layers_per_rank is not None else config_layers // ranks[0]
    if m < 1:
        raise StudyError(f"weak scaling: {m} layers per rank; pass --layers-per-rank >= 1")
    return {p: m * p for p in ranks}


def derived_config(config: str, sets: list[str], layers: int, ranks: int,
                   steps: int | None, threads: int | None = None) -> str:
    """The YAML of one run of the study: the config file's settings, the overrides, N, the
    steps and the threads per rank (not the fully resolved config: only what the study sets),
    validated for P."""
    raw = yaml.safe_load(Path(config).read_text()) or {}
    extra = [f"model.layers={layers}"] + ([f"train.steps={steps}"] if steps is not None else []) \
        + ([f"runtime.threads={threads}"] if threads is not None else [])
    for text in list(sets) + extra:
        (section, key), value = parse_override(text)
        if raw.get(section) is None:
            raw[section] = {}
        raw[section][key] = value
    path = (raw.get("data") or {}).get("path")
    if path and not Path(str(path)).is_absolute():      # the jobs may run elsewhere
        raw["data"]["path"] = str(Path(str(path)).resolve())
    try:
        validate(build_config(raw), ranks)
    except ConfigError as exc:
        raise ConfigError(f"{ranks} ranks, N = {layers}: {exc}") from None
    head = f"# {Path(config).name}, derived by mgrit-nn scaling for {ranks} rank(s)\n"
    return head + yaml.safe_dump(raw, sort_keys=False)


def threads_per_rank(ranks: list[int], local: bool, job_vars: dict[str, str]) -> int:
    """The torch threads of every rank in every run: ``--local``, the cores this process may
    use over the largest rank count (at least 1); jobs, the template's CPUS_PER_TASK."""
    if local:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
        return max(1, cores // max(ranks))
    from mgrit_nn.commands.job import DEFAULTS

    value = job_vars.get("CPUS_PER_TASK", DEFAULTS["CPUS_PER_TASK"])
    if not value.isdigit() or int(value) < 1:
        raise StudyError(f"--var CPUS_PER_TASK={value!r}: expected a positive integer")
    return int(value)


def prepare(config: str, kind: str, ranks: list[int], study: Path, *,
            layers_per_rank: int | None = None, sets: list[str] = (), steps: int | None = None,
            template: str = "cpu", job_vars: dict[str, str] | None = None,
            ranks_per_node: int | None = None, force: bool = False,
            threads: int | None = None) -> list[Point]:
    """Write the study folder: derived configs, job scripts, study.json. Nothing runs.
    ``threads``: runtime.threads of every run, unless the config or ``sets`` give one."""
    if kind not in ("strong", "weak"):
        raise StudyError(f"--kind must be strong or weak, got {kind!r}")
    job_vars = dict(job_vars or {})
    clash = sorted(set(job_vars) & set(COMPUTED_VARS))
    if clash:
        raise StudyError(f"--var {', '.join(clash)}: set by mgrit-nn scaling for every job")
    if steps is not None and steps < 1:
        raise StudyError(f"--steps must be >= 1, got {steps}")
    base = load_config(config, list(sets))
    layers = layers_for(kind, ranks, base.model.layers, layers_per_rank)
    if base.runtime.threads > 0:                    # the config's own, held for every run
        threads = base.runtime.threads
    held = threads if base.runtime.threads == 0 else None
    texts = {p: derived_config(config, sets, layers[p], p, steps, held) for p in ranks}
    if study.exists() and not study.is_dir():
        raise StudyError(f"--out {study} is a file, not a folder: choose another --out")
    if (study / STUDY_FILE).exists():
        if not force:
            raise StudyError(f"{study} already holds a study; pass --force to start it again "
                             "(its ranks_* folders are deleted) or choose another --out")
        for old in study.glob("ranks_*"):
            shutil.rmtree(old)
    study.mkdir(parents=True, exist_ok=True)
    points = []
    for p in ranks:
        pt = Point(p, layers[p], rank_folder(study, p).resolve())
        pt.folder.mkdir(parents=True, exist_ok=True)
        pt.config.write_text(texts[p])
        values = {**job_vars, "CONFIG": str(pt.config), "OUT": str(pt.folder), "BENCH": "1",
                  "NTASKS": str(p), "JOB_NAME": job_vars.get("JOB_NAME", f"{study.name}_p{p}"),
                  "OUTPUT": job_vars.get("OUTPUT", str(pt.folder / "slurm-%j.out"))}
        if ranks_per_node:
            values.update(NODES=str(math.ceil(p / ranks_per_node)),
                          NTASKS_PER_NODE=str(min(p, ranks_per_node)))
        else:                                     # let SLURM place the P tasks
            values.update(NODES="", NTASKS_PER_NODE="")
        script = pt.folder / "job.sbatch"
        script.write_text(render_kind(template, values))
        script.chmod(0o755)
        points.append(pt)
    manifest = {"config": str(Path(config).resolve()), "kind": kind, "ranks": ranks,
                "layers": {str(p): layers[p] for p in ranks}, "set": list(sets),
                "steps": steps, "threads": threads, "template": template,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "runs": {str(p): {"folder": rank_folder(study, p).name, "layers": layers[p],
                                  "status": "generated"} for p in ranks}}
    write_manifest(study, manifest)
    return points


def read_manifest(study: Path) -> dict:
    return json.loads((study / STUDY_FILE).read_text())


def write_manifest(study: Path, manifest: dict) -> None:
    tmp = study / (STUDY_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(study / STUDY_FILE)


# -- running here -------------------------------------------------------------------------------
def launcher_command(launcher: str | None, ranks: int) -> list[str]:
    """The MPI launcher for P ranks: ``--launcher`` (``{n}`` is replaced by P, else ``-n P``
    is appended), or the mpiexec next to this Python, or the one on PATH."""
    if launcher:
        words = shlex.split(launcher)
        if any("{n}" in w for w in words):
            return [w.replace("{n}", str(ranks)) for w in words]
        return words + ["-n", str(ranks)]
    here = Path(sys.executable).with_name("mpiexec")
    exe = str(here) if here.is_file() else shutil.which("mpiexec")
    if exe is None:
        raise StudyError("no mpiexec next to this Python or on PATH: install the mpich extra, "
                         "load your MPI module, or pass --launcher 'mpirun -n {n}'")
    return [exe, "-n", str(ranks)]


def run_logged(cmd: list[str], log: Path, timeout: float | None) -> tuple[int, str]:
    """Run one command in its own process group, stdout and stderr appended to ``log``;
    returns (exit status, stdout). On timeout or Ctrl-C the whole group is stopped."""
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # a SIGTERM or Ctrl-C between the fork and ``proc`` being known would leave the group
        # running: they wait until the try below, where they stop it
        stops = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env,
                                    start_new_session=True,       # the child takes the mask:
                                    preexec_fn=lambda: signal.pthread_sigmask(   # clear it
                                        signal.SIG_UNBLOCK, stops))
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            raise
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            out, _ = proc.communicate(timeout=timeout or None)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
            _stop_group(proc)
            if isinstance(exc, KeyboardInterrupt):
                raise
            f.write(f"mgrit-nn scaling: stopped after the --timeout of {timeout} s\n")
            return 124, ""
        f.write(out)
    return proc.returncode, out


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_error(log: Path) -> str:
    """The line of the log that says what went wrong (mgrit-nn prints one such line; its
    first line, saying what a command is doing, ends with ' ...')."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if (ln.startswith("mgrit-nn") and not ln.endswith(" ...")) or "Error" in ln:
            return ln
    return lines[-1] if lines else "(no output)"


def run_local(study: Path, launcher: str | None = None, timeout: float | None = None,
              echo=print) -> dict[int, str]:
    """Run bench and train for every rank count, one after another; returns P -> status
    (``ok`` or ``failed: <message>``) and records it in study.json."""
    manifest = read_manifest(study)
    python = [sys.executable, "-m", "mgrit_nn"]
    statuses = {}
    for p in manifest["ranks"]:
        entry = manifest["runs"][str(p)]
        folder = (study / entry["folder"]).resolve()
        cfg, log = str(folder / "scaling_config.yaml"), folder / "run.log"
        log.write_text("")
        launch = launcher_command(launcher, p)
        problems = []
        t0 = time.perf_counter()
        rc, out = run_logged(launch + python + ["bench", cfg], log, timeout)
        if rc == 0:
            try:
                bench = json.loads(out.strip().splitlines()[-1])
                (folder / "bench.json").write_text(json.dumps(bench, indent=1))
            except (ValueError, IndexError):
                problems.append("bench printed no JSON line")
        else:
            problems.append(f"bench exit {rc}: {_last_error(log)}")
        rc, _ = run_logged(launch + python + ["train", cfg, "--out", str(folder), "--quiet"],
                           log, timeout)
        if rc != 0:
            problems.append(f"train exit {rc}: {_last_error(log)}")
        status = "ok" if not problems else "failed: " + "; ".join(problems)
        entry.update(status=status, seconds=round(time.perf_counter() - t0, 1),
                     launcher=shlex.join(launch))
        write_manifest(study, manifest)
        statuses[p] = status
        echo(f"mgrit-nn scaling: {p} rank(s), N = {entry['layers']}: {status} "
             f"({entry['seconds']:.0f} s, log {log})")
    return statuses


def submit(study: Path, echo=print) -> dict[int, str]:
    """``sbatch`` every job of the study; returns P -> job id (recorded in study.json)."""
    if shutil.which("sbatch") is None:
        raise StudyError(f"sbatch not found on PATH (--submit needs a SLURM login node); "
                         f"the job scripts are ready in {study}/ranks_*/job.sbatch")
    manifest = read_manifest(study)
    ids = {}
    for p in manifest["ranks"]:
        entry = manifest["runs"][str(p)]
        script = study / entry["folder"] / "job.sbatch"
        proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            msg = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise StudyError(f"sbatch {script} failed (exit {proc.returncode}): {msg}")
        ids[p] = proc.stdout.strip().split(";")[0]
        entry.update(status="submitted", job_id=ids[p])
        write_manifest(study, manifest)
        echo(f"mgrit-nn scaling: {p} rank(s), N = {entry['layers']}: job {ids[p]}")
    return ids


def main(args) -> int:
    """The ``mgrit-nn scaling`` command; the last stdout line is one JSON object."""
    from mgrit_nn.commands.job import parse_vars

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)
    def stop(signum, frame):            # kill or SLURM: stop the running command's ranks too
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    try:
        ranks, job_vars = parse_ranks(args.ranks), parse_vars(args.var)
        study = Path(args.out or Path("studies") / f"{Path(args.config).stem}_{args.kind}")
        prepare(args.config, args.kind, ranks, study, layers_per_rank=args.layers_per_rank,
                sets=args.set, steps=args.steps, template=args.template,
                job_vars=job_vars, ranks_per_node=args.ranks_per_node, force=args.force,
                threads=threads_per_rank(ranks, args.local, job_vars))
        say(f"mgrit-nn scaling: {args.kind} study in {study}, ranks {args.ranks}, "
            f"{read_manifest(study)['threads']} torch thread(s) per rank in every run")
        result = {"study": str(study), "kind": args.kind, "ranks": ranks}
        code = 0
        if args.local:
            statuses = run_local(study, args.launcher, args.timeout, echo=say)
            failed = [p for p, s in statuses.items() if s != "ok"]
            result.update(failed=failed)
            if failed:
                say(f"mgrit-nn scaling: {len(failed)} of {len(ranks)} run(s) failed "
                    f"(ranks {', '.join(map(str, failed))}); see their run.log")
                code = 1
            say(f"mgrit-nn scaling: next: mgrit-nn report {study}")
        elif args.submit:
            result.update(jobs=submit(study, echo=say))
            say(f"mgrit-nn scaling: when the jobs are done: mgrit-nn report {study}")
        else:
            say(f"mgrit-nn scaling: job scripts written; run them with --local or --submit, "
                f"or sbatch {study}/ranks_*/job.sbatch")
    except (StudyError, TemplateError) as exc:
        say(f"mgrit-nn scaling: {exc}")
        return 2
    except ConfigError as exc:
        say(f"mgrit-nn scaling: config error: {exc}")
        return 2
    except KeyboardInterrupt:
        say("mgrit-nn scaling: interrupted; the running command was stopped")
        return 130
    print(json.dumps(result), flush=True)
    return code
