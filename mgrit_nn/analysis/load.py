"""Reading runs and studies: history.h5, result.json, bench.json, study.json (plain h5py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml

from mgrit_nn.io.history import COLUMNS


class AnalysisError(ValueError):
    """Nothing usable to report or plot (printed as one line)."""


@dataclass
class RunData:
    """One training run: its history columns and whatever else its folder holds."""

    folder: Path
    method: str
    ranks: int
    layers: int
    config: dict
    steps: dict[str, np.ndarray]                  # /steps/<column>, vlen columns excluded
    fwd_residuals: list[np.ndarray]
    adj_residuals: list[np.ndarray]
    timing: dict[str, np.ndarray]                 # compute/comm/wait, (steps, ranks)
    result: dict | None = None
    label: str = ""

    @property
    def n_steps(self) -> int:
        return len(self.steps.get("step", ()))

    @property
    def method_columns(self) -> list[str]:
        """Columns a method adds beyond the common ones (violation, beta, ...)."""
        return sorted(c for c in self.steps if c not in COLUMNS)

    def step_time(self) -> float:
        """Median wall time of a step, the first (warm-up) step left out when there are more."""
        t = self.steps.get("step_time_s", np.array([]))
        t = t[1:] if len(t) > 1 else t
        t = t[np.isfinite(t)]
        return float(np.median(t)) if len(t) else float("nan")

    def layer_parallel(self) -> bool:
        return bool(np.isfinite(self.steps.get("fwd_residual", np.array([np.nan]))).any())


def load_run(path: str | Path) -> RunData:
    """A run from its history.h5 (or its folder)."""
    path = Path(path)
    h5 = path / "history.h5" if path.is_dir() else path
    if not h5.is_file():
        raise AnalysisError(f"{h5}: no such file")
    if not h5py.is_hdf5(h5):
        raise AnalysisError(f"{h5}: not an HDF5 file (empty, truncated, or another format)")
    try:
        # no file lock: a report may read the history of a run that is still writing it
        with h5py.File(h5, "r", locking=False) as f:
            if "steps" not in f:
                raise AnalysisError(f"{h5}: not an mgrit_nn history file (no /steps)")
            g = f["steps"]
            # a running writer appends a row column by column: only the rows all columns hold
            n = min((ds.shape[0] for k in ("steps", "timing") if k in f
                     for ds in f[k].values()), default=0)
            vlen = ("fwd_residuals", "adj_residuals")
            steps = {c: g[c][:n] for c in g if c not in vlen}
            res = {c: [np.asarray(r, dtype=float) for r in g[c][:n]] if c in g else []
                   for c in vlen}
            timing = {c: f["timing"][c][:n] for c in f["timing"]} if "timing" in f else {}
            attrs = dict(f.attrs)
    except OSError as exc:
        raise AnalysisError(f"{h5}: cannot be read: a damaged or truncated HDF5 file "
                            f"({type(exc).__name__})") from None
    config = yaml.safe_load(attrs.get("config", "")) or {}
    result_file = h5.parent / "result.json"
    result = None
    if result_file.is_file():
        try:
            result = json.loads(result_file.read_text())
        except ValueError:
            result = None
    method = str(attrs.get("method") or config.get("train", {}).get("method", "?"))
    ranks = int(attrs.get("ranks", 1))
    run = RunData(h5.parent, method, ranks, int(config.get("model", {}).get("layers", 0)),
                  config, steps, res["fwd_residuals"], res["adj_residuals"], timing, result)
    run.label = f"{method}, {ranks} rank{'s' if ranks != 1 else ''}"
    return run


def find_runs(folder: str | Path) -> list[RunData]:
    """Every run below a folder (every history.h5), labelled by method and ranks, made
    unique with the folder name where two runs would read the same."""
    folder = Path(folder)
    files = sorted(folder.rglob("history.h5"))
    runs = [load_run(h) for h in files]
    labels = [r.label for r in runs]
    for r in runs:
        if labels.count(r.label) > 1:
            r.label = f"{r.label} ({r.folder.relative_to(folder) if r.folder != folder else '.'})"
    return runs


@dataclass
class StudyPoint:
    """One rank count of a scaling study, with what its folder holds."""

    ranks: int
    layers: int
    folder: Path
    status: str
    bench: dict | None = None
    run: RunData | None = None
    job_id: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Study:
    folder: Path
    kind: str
    config: str
    sets: list[str]
    points: list[StudyPoint]


def is_study(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "study.json").is_file() or any(folder.glob("ranks_*/scaling_config.yaml"))


def load_study(folder: str | Path) -> Study:
    """A study folder of ``mgrit-nn scaling``; missing or failed rank counts are kept, with
    their status saying why there is no data."""
    folder = Path(folder)
    manifest_file = folder / "study.json"
    if manifest_file.is_file():
        try:
            m = json.loads(manifest_file.read_text())
            entries = [(int(p), e) for p, e in m["runs"].items()]
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise AnalysisError(f"{manifest_file} is not a study manifest of mgrit-nn "
                                f"scaling ({type(exc).__name__}: {exc})") from None
    else:                                   # a study folder without its manifest
        m = {"kind": "", "config": "", "set": []}
        entries = []
        for d in sorted(folder.glob("ranks_*")):
            cfg = yaml.safe_load((d / "scaling_config.yaml").read_text()) or {}
            entries.append((int(d.name.split("_")[1]), {
                "folder": d.name, "layers": cfg.get("model", {}).get("layers", 0),
                "status": "unknown (no study.json)"}))
    points = []
    for p, e in sorted(entries):
        pt = StudyPoint(p, int(e.get("layers", 0)), folder / e["folder"], e.get("status", "?"),
                        job_id=e.get("job_id"))
        bench_file = pt.folder / "bench.json"
        if bench_file.is_file():
            try:
                pt.bench = json.loads(bench_file.read_text())
            except ValueError:
                pt.problems.append("bench.json unreadable")
        else:
            pt.problems.append("no bench.json")
        if (pt.folder / "history.h5").is_file():
            try:
                pt.run = load_run(pt.folder)
                pt.run.label = f"{p} rank{'s' if p != 1 else ''}"
            except AnalysisError as exc:
                pt.problems.append(str(exc))
            if pt.run is not None and not (pt.folder / "result.json").is_file():
                pt.problems.append("training incomplete (no result.json)")
        else:
            pt.problems.append("no history.h5")
        points.append(pt)
    kind = m.get("kind") or ("strong" if len({p.layers for p in points}) <= 1 else "weak")
    if not points:
        raise AnalysisError(f"{folder}: a study without rank counts")
    return Study(folder, kind, m.get("config", ""), m.get("set", []), points)


def point_status(pt: StudyPoint) -> str:
    """One short status for the table: ok, failed (why), or what is missing."""
    if pt.status.startswith("failed"):
        return pt.status
    if not pt.problems:
        return "ok"
    lead = {"submitted": f"submitted (job {pt.job_id})", "generated": "not run"}.get(
        pt.status, "" if pt.status == "ok" else pt.status)
    return "; ".join([s for s in [lead] if s] + pt.problems)


def point_threads(pt: StudyPoint) -> int | None:
    """The torch threads per rank of a rank count: what its bench measured with, else the
    runtime.threads of its run's config (None: not known, or 0 = chosen at run time)."""
    threads = ((pt.bench or {}).get("machine") or {}).get("threads")
    if threads is None and pt.run is not None:
        threads = (pt.run.config.get("runtime") or {}).get("threads") or None
    return int(threads) if threads is not None else None
