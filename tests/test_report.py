"""mgrit-nn report / plot on synthetic runs and studies (no MPI): tables, metrics, figures,
method columns when present, clear errors when there is nothing to report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mgrit_nn.analysis import (
    AnalysisError,
    StudyPoint,
    find_runs,
    load_run,
    plot_history,
    report,
    scaling_metrics,
    span_model,
)
from mgrit_nn.config import Config
from mgrit_nn.io.history import History

ROOT = Path(__file__).resolve().parents[1]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def write_run(folder: Path, method: str, ranks: int, steps: int = 20, layers: int = 32,
              extra: dict | None = None, result: bool = True, step_time: float = 0.1) -> Path:
    """A history.h5 (and result.json) as mgrit-nn train writes them."""
    cfg = Config()
    cfg.train.method, cfg.model.layers = method, layers
    h = History(folder / "history.h5", cfg.to_yaml(), ranks, method)
    lp = method in ("mgrit", "oneshot")
    for k in range(1, steps + 1):
        row = {"step": k, "epoch": 0, "loss": 2.0 * 0.9 ** k, "train_accuracy": 1 - 0.8 * 0.9 ** k,
               "lr": 0.01, "grad_norm": 1.0 / k, "step_time_s": step_time * (3 if k == 1 else 1)}
        if k % 5 == 0:
            row.update(val_loss=2.1 * 0.9 ** k, val_accuracy=1 - 0.85 * 0.9 ** k)
        row.update(fwd_iters=0, adj_iters=0)          # int columns: 0 without MGRIT
        if lp:
            row.update(fwd_iters=2, adj_iters=2, fwd_residual=1e-3 * 0.7 ** k,
                       adj_residual=1e-4 * 0.7 ** k)
        for name, f in (extra or {}).items():
            row[name] = f(k)
        fwd = [1e-2 * 0.7 ** k, 1e-3 * 0.7 ** k] if lp else []
        timing = np.tile([step_time * 0.8, step_time * 0.1, step_time * 0.1], (ranks, 1))
        h.append(row, fwd, [x / 10 for x in fwd], timing)
    h.close()
    if result:
        (folder / "result.json").write_text(json.dumps({
            "method": method, "ranks": ranks, "steps": steps, "train_accuracy": 0.9,
            "val_accuracy": 0.88, "wall_time_s": steps * step_time}))
    return folder


def test_load_run_reads_columns_and_method_columns(tmp_path):
    write_run(tmp_path / "pen", "penalty", 4, extra={"violation": lambda k: 0.5 ** k,
                                                      "beta": lambda k: 2.0 ** (k // 5)})
    run = load_run(tmp_path / "pen" / "history.h5")
    assert run.method == "penalty" and run.ranks == 4 and run.layers == 32 and run.n_steps == 20
    assert run.method_columns == ["beta", "violation"]
    assert run.step_time() == pytest.approx(0.1)           # the warm-up step is left out
    assert not run.layer_parallel() and run.label == "penalty, 4 ranks"


def test_report_of_several_methods(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "serial", "serial", 1)
    write_run(runs / "oneshot", "oneshot", 4)
    write_run(runs / "penalty", "penalty", 4, extra={"violation": lambda k: 0.5 ** k,
                                                      "beta": lambda k: 2.0 ** (k // 5),
                                                      "local_loss": lambda k: 1.0 / k})
    write_run(runs / "parpas", "parpas", 4, extra={"regression_mse": lambda k: 1.0 / k},
              result=False)
    write_run(runs / "critic", "local_critic", 3, extra={          # one column per group
        f"{name}_{j}": (lambda k, j=j: (j + 1.0) / k) for name in ("local_loss", "critic_loss")
        for j in range(2)})
    written = {p.name for p in report(runs)}
    assert written == {"training.png", "residuals.png", "violation.png", "method_columns.png",
                       "report.md"}
    assert png_size(runs / "training.png") == (1344, 528)
    assert png_size(runs / "violation.png") == (3 * 600, 528)          # three panels
    # critic_loss_0/1 share a panel, local_loss_0/1 too (not the penalty panel), regression_mse
    assert png_size(runs / "method_columns.png") == (3 * 600, 528)
    md = (runs / "report.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| `")]
    assert len(rows) == 5
    by_run = {r.split("|")[1].strip(): r for r in rows}
    assert "| oneshot | 4 | 32 | 20 |" in by_run["`oneshot`"]
    assert "2.0 + 2.0" in by_run["`oneshot`"] and "| 0.88 |" in by_run["`oneshot`"]
    assert by_run["`penalty`"].rstrip(" |").endswith("9.54e-07")      # final violation 0.5^20
    assert "| – | – | – |" in by_run["`parpas`"]                       # not finished: no result
    assert [r.label for r in find_runs(runs)] == ["local_critic, 3 ranks", "oneshot, 4 ranks",
                                                  "parpas, 4 ranks", "penalty, 4 ranks",
                                                  "serial, 1 rank"]


def test_plot_one_history(tmp_path):
    write_run(tmp_path / "run", "mgrit", 3)
    written = {p.name for p in plot_history(tmp_path / "run" / "history.h5")}
    assert written == {"training.png", "residuals.png", "timing.png"}
    assert all(png_size(tmp_path / "run" / w)[1] == 528 for w in written)
    assert not (tmp_path / "run" / "violation.png").exists()   # no penalty columns: no plot


def test_nothing_to_report_is_one_line(tmp_path):
    with pytest.raises(AnalysisError, match="no study.json and no history.h5"):
        report(tmp_path)
    (tmp_path / "bad.h5").write_text("not hdf5")
    p = subprocess.run([sys.executable, "-m", "mgrit_nn", "plot", str(tmp_path / "bad.h5")],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    first, error = p.stderr.splitlines()               # what it does, then what went wrong
    assert first.startswith("mgrit-nn plot: plotting") and error.startswith("mgrit-nn plot:")


def _point(ranks, layers, t, span=None):
    b = {"oneshot_grad_s": t, "span_speedup_oneshot": span} if t is not None else None
    return StudyPoint(ranks, layers, Path("."), "ok", bench=b)


def test_scaling_metrics_strong_and_weak():
    strong = [_point(1, 64, 8.0, 0.5), _point(2, 64, 4.4, 0.9), _point(4, 64, 2.5, 1.6),
              _point(8, 64, None)]
    m = scaling_metrics(strong, lambda p: p.bench and p.bench["oneshot_grad_s"])
    assert sorted(m) == [1, 2, 4]                                   # P = 8 has no data
    assert m[4]["speedup"] == pytest.approx(3.2) and m[4]["efficiency"] == pytest.approx(0.8)
    assert span_model(strong, "span_speedup_oneshot")[4] == pytest.approx(3.2)
    weak = [_point(2, 32, 1.0), _point(4, 64, 1.25)]               # N grows with P
    m = scaling_metrics(weak, lambda p: p.bench["oneshot_grad_s"])
    assert m[4]["efficiency"] == pytest.approx(0.8)                 # T(P_ref) / T(P)
    assert m[4]["speedup"] == pytest.approx(1.6) and m[4]["ref"] == 2


def test_study_report_with_a_failed_and_a_missing_rank_count(tmp_path):
    study = tmp_path / "study"
    runs = {}
    for p, t, status in ((1, 4.0, "ok"), (2, 2.2, "ok"), (4, None, "failed: train exit 1: "
                                                          "mgrit-nn: rank 3/4 failed: boom"),
                         (8, None, "submitted")):
        d = study / f"ranks_{p:04d}"
        d.mkdir(parents=True)
        (d / "scaling_config.yaml").write_text(yaml.safe_dump({"model": {"layers": 64}}))
        runs[str(p)] = {"folder": d.name, "layers": 64, "status": status, "job_id": "77"}
        if t is not None:
            (d / "bench.json").write_text(json.dumps({
                "ranks": p, "layers": 64, "serial_grad_s": 1.0, "oneshot_grad_s": t,
                "ratio_oneshot": t, "mgrit_grad_s": 3 * t, "span_speedup_oneshot": 0.4 * p,
                "span_speedup_mgrit": 0.2 * p, "device": "cpu",
                "machine": {"cpus": 2, "platform": "test", "threads": 1}}))
            write_run(d, "oneshot", p, step_time=0.2 / p)
    (study / "study.json").write_text(json.dumps({"kind": "strong", "config": "peaks.yaml",
                                                  "set": [], "ranks": [1, 2, 4, 8],
                                                  "runs": runs}))
    written = {p.name for p in report(study)}
    assert {"runtime.png", "speedup.png", "efficiency.png", "training.png", "residuals.png",
            "timing.png", "report.md"} <= written
    md = (study / "report.md").read_text()
    assert "| ranks | N | threads/rank | status | serial [s] |" in md
    assert "| 1 | 64 | 1 | ok | 1 | 4 | 1 | 1 | 1 |" in md
    assert "| 2 | 64 | 1 | ok | 1 | 2.2 | 1.82 | 0.909 | 2 |" in md
    assert "| 4 | 64 | – | failed: train exit 1: mgrit-nn: rank 3/4 failed: boom |" in md
    assert "| 8 | 64 | – | submitted (job 77); no bench.json; no history.h5 |" in md
    assert "| 2 | 64 | 1 | ok | 20 | 0.1 | 2 | 1 |" in md               # training step times
    assert "Oversubscribed:** 4, 8 ranks on 2 cores" in md
    assert "Threads per rank: 1 at every rank count" in md


def test_report_says_when_threads_per_rank_differ(tmp_path):
    """A study whose rank counts ran with different torch threads per rank (as when
    runtime.threads was 0 and every run took cores / P) does not compare P alone."""
    study = tmp_path / "study"
    runs = {}
    for p, threads in ((1, 2), (2, 1)):
        d = study / f"ranks_{p:04d}"
        d.mkdir(parents=True)
        runs[str(p)] = {"folder": d.name, "layers": 64, "status": "ok"}
        (d / "bench.json").write_text(json.dumps({
            "ranks": p, "layers": 64, "serial_grad_s": 1.0, "oneshot_grad_s": 1.0 / p,
            "device": "cpu", "machine": {"cpus": 2, "threads": threads}}))
    (study / "study.json").write_text(json.dumps({"kind": "strong", "config": "peaks.yaml",
                                                  "set": [], "ranks": [1, 2], "runs": runs}))
    report(study)
    md = (study / "report.md").read_text()
    assert "**Threads per rank differ** (P = 1: 2, P = 2: 1)" in md
    assert "| 1 | 64 | 2 | no history.h5 |" in md and "| 2 | 64 | 1 | no history.h5 |" in md
    assert "at every rank count" not in md
