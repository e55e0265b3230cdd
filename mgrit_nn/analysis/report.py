"""``mgrit-nn report`` and ``mgrit-nn plot``: Markdown tables and PNG plots.

Scaling metrics, with P_ref the smallest rank count that has the measurement and W(P)
the work of the run (N, so W is constant in a strong study):

    speed-up(P)   = W(P)/W(P_ref) * T(P_ref) / T(P)      (weak: the scaled speed-up)
    efficiency(P) = speed-up(P) * P_ref / P               (weak: T(P_ref) / T(P))
    span model(P) = span_speedup(P) / span_speedup(P_ref) (bench's critical-path model)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mgrit_nn.analysis import plots
from mgrit_nn.analysis.load import (
    AnalysisError,
    RunData,
    Study,
    StudyPoint,
    find_runs,
    is_study,
    load_run,
    load_study,
    point_status,
    point_threads,
)

GRADIENTS = {"oneshot_grad_s": "one-shot gradient", "mgrit_grad_s": "exact MGRIT gradient"}
SPANS = {"oneshot_grad_s": "span_speedup_oneshot", "mgrit_grad_s": "span_speedup_mgrit"}
OTHER_TITLES = {"regression_mse": "co-state regression MSE", "critic_loss": "local critic loss",
                "local_loss": "layer group's local loss",
                "honest_loss": "loss of the exact forward pass"}


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in row) + " |"
            for row in rows]
    return out


# -- scaling metrics -----------------------------------------------------------------------------
def scaling_metrics(points: list[StudyPoint], time_of) -> dict[int, dict]:
    """P -> {time, speedup, efficiency} for the points where ``time_of(point)`` is finite."""
    have = [(p, time_of(p)) for p in points]
    have = [(p, t) for p, t in have if t is not None and math.isfinite(t) and t > 0]
    if not have:
        return {}
    ref, t_ref = have[0]
    out = {}
    for p, t in have:
        s = (p.layers / ref.layers) * t_ref / t
        out[p.ranks] = {"time": t, "speedup": s, "efficiency": s * ref.ranks / p.ranks,
                        "ref": ref.ranks}
    return out


def span_model(points: list[StudyPoint], key: str) -> dict[int, float]:
    """P -> modelled speed-up over P_ref from bench's span_speedup (same P_ref as measured)."""
    have = [(p.ranks, p.bench.get(key)) for p in points if p.bench and p.bench.get(key)]
    if not have:
        return {}
    s_ref = have[0][1]
    return {p: s / s_ref for p, s in have}


def _bench_time(key: str):
    return lambda p: p.bench.get(key) if p.bench else None


def _step_time(p: StudyPoint):
    return p.run.step_time() if p.run is not None and p.run.n_steps else None


def _curves(pts, grads: dict, train: dict) -> tuple[dict, dict, dict, dict]:
    """Time, speed-up and efficiency curves of every gradient and the training step, and
    the span models' speed-ups."""
    curves_t, curves_s, curves_e, models = {}, {}, {}, {}
    for k, m in grads.items():
        ps = sorted(m)
        curves_t[GRADIENTS[k]] = (ps, [m[p]["time"] for p in ps])
        curves_s[GRADIENTS[k]] = (ps, [m[p]["speedup"] for p in ps])
        curves_e[GRADIENTS[k]] = (ps, [m[p]["efficiency"] for p in ps])
        sm = span_model(pts, SPANS[k])
        if sm:
            models[f"span model ({GRADIENTS[k].replace(' gradient', '')})"] = (
                sorted(sm), [sm[p] for p in sorted(sm)])
    if train:
        ps = sorted(train)
        curves_t["training step (median)"] = (ps, [train[p]["time"] for p in ps])
        curves_s["training step"] = (ps, [train[p]["speedup"] for p in ps])
        curves_e["training step"] = (ps, [train[p]["efficiency"] for p in ps])
    serial = [(p.ranks, p.bench["serial_grad_s"]) for p in pts
              if p.bench and p.bench.get("serial_grad_s")]
    if serial:
        curves_t["serial autograd gradient (rank 0 alone)"] = ([s[0] for s in serial],
                                                         [s[1] for s in serial])
    return curves_t, curves_s, curves_e, models


def _ideal_and_model(pts, one: dict | None):
    """The one-shot gradient's ideal time curve and the span model's prediction (or None)."""
    if not one:
        return None, None
    ideal = model_t = None
    ref = min(one)
    by_p = {p.ranks: p for p in pts}
    ps = sorted(one)
    ideal = (ps, [one[ref]["time"] * by_p[p].layers / by_p[ref].layers * ref / p for p in ps])
    sm = span_model(pts, SPANS["oneshot_grad_s"])
    if sm:
        mp = sorted(set(sm) & set(one))
        model_t = (mp, [one[ref]["time"] * by_p[p].layers / by_p[ref].layers / sm[p]
                        for p in mp])
    return ideal, model_t


def study_report(study: Study, out: Path) -> list[Path]:
    """Plots and report.md of a scaling study."""
    pts = study.points
    name = Path(study.config).name or study.folder.name
    kind = study.kind or "scaling"
    layers = sorted({p.layers for p in pts})
    n_text = f"N = {layers[0]}" if len(layers) == 1 else f"N = {layers[0]}…{layers[-1]}"
    title = f"{kind.capitalize()} scaling: {name}, {n_text}"
    grads = {k: scaling_metrics(pts, _bench_time(k)) for k in GRADIENTS}
    grads = {k: v for k, v in grads.items() if v}
    train = scaling_metrics(pts, _step_time)
    written: list[Path] = []

    curves_t, curves_s, curves_e, models = _curves(pts, grads, train)
    if curves_t:
        ideal, model_t = _ideal_and_model(pts, grads.get("oneshot_grad_s"))
        written.append(plots.plot_runtime(curves_t, ideal, model_t, f"{title}: time",
                                          out / "runtime.png"))
        p_ref = min(min(ps) for ps, _ in curves_s.values())
        written.append(plots.plot_speedup(curves_s, models, p_ref,
                                          f"{title}: speed-up" if kind != "weak"
                                          else f"{title}: scaled speed-up", out / "speedup.png"))
        written.append(plots.plot_efficiency(curves_e, f"{title}: efficiency",
                                             out / "efficiency.png"))
    runs = [p.run for p in pts if p.run is not None]
    written += _run_plots(runs, title, out)
    timed = [p for p in pts if p.run is not None and p.run.timing]
    if timed:
        parts = {c: [float(np.nanmedian(_after_first(p.run.timing[c]))) for p in timed]
                 for c in ("compute", "comm", "wait")}
        written.append(plots.plot_timing([str(p.ranks) for p in timed], parts, "MPI ranks P",
                                         f"{title}: time per step and rank",
                                         out / "timing.png"))
    written.append(_write_study_md(study, grads, train, out, title,
                                   [w for w in written if w is not None]))
    return [w for w in written if w is not None]


def _machine_lines(pts) -> list[str]:
    """The machine line of the report (and a warning for oversubscribed rank counts)."""
    lines: list[str] = []
    bench = next((p.bench for p in pts if p.bench), None)
    if bench:
        m = bench.get("machine", {})
        mpi = " ".join(str(m.get("mpi", "?")).split())
        lines += [f"Machine: {m.get('platform', '?')}, {m.get('cpus', '?')} cores, torch "
                  f"{m.get('torch', '?')}, {mpi}; device {bench.get('device')}, "
                  f"{bench.get('dtype')}, batch {bench.get('batch')}, width {bench.get('width')},"
                  f" relax {bench.get('relax')}, cfactor {bench.get('cfactor')}.", ""]
        cpus = m.get("cpus")
        over = [p.ranks for p in pts if isinstance(cpus, int) and p.ranks > cpus]
        if over and bench.get("device", "cpu") == "cpu":
            lines += [f"**Oversubscribed:** {', '.join(map(str, over))} ranks on {cpus} cores; "
                      "waiting ranks busy-poll, so those times do not measure scaling.", ""]
    threads = {p.ranks: point_threads(p) for p in pts if point_threads(p) is not None}
    if len(set(threads.values())) == 1:
        lines += [f"Threads per rank: {next(iter(threads.values()))} at every rank count (the "
                  "cores per rank held fixed: the times change with P only).", ""]
    elif threads:
        each = ", ".join(f"P = {p}: {t}" for p, t in threads.items())
        lines += [f"**Threads per rank differ** ({each}): the times change with the cores per "
                  "rank too, not only with P.", ""]
    return lines


def _training_table(pts, train: dict) -> list[str]:
    """The report's training section: one row per rank count from its history.h5."""
    lines = ["## Training (`history.h5`)", ""]
    rows = []
    for p in pts:
        r, m = p.run, train.get(p.ranks, {})
        if r is None or not r.n_steps:
            rows.append([p.ranks, p.layers, point_threads(p), point_status(p)] + ["–"] * 9)
            continue
        res = r.result or {}
        tim = {c: float(np.nansum(r.timing[c])) for c in r.timing} if r.timing else {}
        total = sum(tim.values())
        share = (tim.get("comm", 0) + tim.get("wait", 0)) / total if total > 0 else None
        rows.append([p.ranks, p.layers, point_threads(p), point_status(p), r.n_steps,
                     m.get("time"), m.get("speedup"), m.get("efficiency"),
                     res.get("wall_time_s"), float(r.steps["loss"][-1]),
                     res.get("val_accuracy"), _iters(r), share])
    lines += _table(["ranks", "N", "threads/rank", "status", "steps", "step time [s]",
                     "speed-up", "efficiency", "wall time [s]", "final loss", "val accuracy",
                     "fwd+adj iterations / step", "comm+wait share"], rows)
    if train:
        lines += ["", f"Step time: median over the steps after the first; reference P_ref = "
                  f"{min(train)}.", ""]
    return lines


def _write_study_md(study: Study, grads: dict, train: dict, out: Path, title: str,
                    figures: list[Path]) -> Path:
    pts = study.points
    lines = [f"# {title}", ""]
    if study.config:
        sets = " ".join(f"--set {s}" for s in study.sets)
        lines += [f"Config: `{study.config}` {sets}".rstrip() + f"; study folder `{study.folder}`.",
                  ""]
    lines += _machine_lines(pts)
    ref = {k: min(v) for k, v in grads.items()}
    lines += ["## Gradient (`mgrit-nn bench`)", ""]
    header = ["ranks", "N", "threads/rank", "status", "serial [s]"]
    for k in GRADIENTS:
        if k in grads:
            short = GRADIENTS[k].replace(" gradient", "")
            header += [f"{short} [s]", f"{short} speed-up", f"{short} efficiency",
                       f"{short} span model"]
    header += ["one-shot / serial"]
    rows = []
    for p in pts:
        b = p.bench or {}
        row = [p.ranks, p.layers, point_threads(p), point_status(p), b.get("serial_grad_s")]
        for k in GRADIENTS:
            if k in grads:
                m = grads[k].get(p.ranks, {})
                sm = span_model(pts, SPANS[k]).get(p.ranks)
                row += [m.get("time"), m.get("speedup"), m.get("efficiency"), sm]
        row.append(b.get("ratio_oneshot"))
        rows.append(row)
    lines += _table(header, rows)
    refs = ", ".join(f"{GRADIENTS[k]}: P_ref = {r}" for k, r in ref.items())
    lines += ["", "Speed-up = T(P_ref) / T(P)" + (" × N(P) / N(P_ref) (scaled speed-up)"
                                                   if study.kind == "weak" else "")
              + ", efficiency = speed-up × P_ref / P; span model = span_speedup(P) / "
              f"span_speedup(P_ref), the critical-path model of `mgrit-nn bench`. {refs}.", ""]
    lines += _training_table(pts, train)
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _after_first(t: np.ndarray) -> np.ndarray:
    """Timing rows without the first (warm-up) step, when there are more."""
    return t[1:] if len(t) > 1 else t


def _iters(r: RunData) -> str:
    f, a = r.steps.get("fwd_iters"), r.steps.get("adj_iters")
    if f is None or not len(f) or not np.any(f):
        return "–"
    return f"{np.mean(f):.1f} + {np.mean(a):.1f}"


# -- runs ----------------------------------------------------------------------------------------
def _run_plots(runs: list[RunData], title: str, out: Path) -> list[Path | None]:
    penalty = [r for r in runs if set(r.method_columns) & set(plots.PENALTY_COLUMNS)]
    rest = {c for r in runs for c in r.method_columns} - set(plots.PENALTY_COLUMNS)
    panels = sorted({c.rpartition("_")[0] if c.rpartition("_")[2].isdigit() else c
                     for c in rest})                     # critic_loss_0, _1: one panel
    others = {c: OTHER_TITLES.get(c, c) for c in panels}
    return [plots.plot_training(runs, title, out / "training.png"),
            plots.plot_residuals(runs, f"{title}: MGRIT residuals", out / "residuals.png"),
            plots.plot_convergence(runs, f"{title}: MGRIT convergence",
                                   out / "mgrit_convergence.png"),
            plots.plot_columns(penalty, plots.PENALTY_COLUMNS, f"{title}: penalty / AL",
                               out / "violation.png"),
            plots.plot_columns(runs, others, f"{title}: method diagnostics",
                               out / "method_columns.png", indexed=True)]


def runs_report(folder: Path, runs: list[RunData], out: Path) -> list[Path]:
    """Plots and report.md comparing several training runs (several methods on one axes)."""
    title = f"Runs in {folder.name or folder}"
    written = [w for w in _run_plots(runs, title, out) if w is not None]
    has_violation = any("violation" in r.steps for r in runs)
    header = ["run", "method", "ranks", "N", "steps", "final loss", "train accuracy",
              "val accuracy", "wall time [s]", "step time [s]", "fwd+adj iterations / step"]
    header += ["final violation"] if has_violation else []
    rows = []
    for r in runs:
        res = r.result or {}
        row = [f"`{r.folder.relative_to(folder) if r.folder != folder else '.'}`", r.method,
               r.ranks, r.layers, r.n_steps,
               float(r.steps["loss"][-1]) if r.n_steps else None,
               res.get("train_accuracy"), res.get("val_accuracy"), res.get("wall_time_s"),
               r.step_time(), _iters(r)]
        if has_violation:
            v = r.steps.get("violation")
            ok = v[np.isfinite(v)] if v is not None else []
            row.append(float(ok[-1]) if len(ok) else None)
        rows.append(row)
    lines = [f"# {title}", ""] + _table(header, rows)
    lines += ["", "Accuracies and wall time from each run's result.json (– while a run has "
              "not finished); step time: median over the steps after the first.", "",
              "## Figures", ""] + [f"![{w.stem}]({w.name})" for w in written] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return written + [path]


def report(folder: str | Path, out: str | Path | None = None) -> list[Path]:
    """Report on a scaling study (``study.json``) or on every run below ``folder``;
    returns the written files (PNGs and report.md)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnalysisError(f"{folder}: not a folder")
    out_dir = Path(out) if out else folder
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_study(folder):
        return study_report(load_study(folder), out_dir)
    runs = find_runs(folder)
    if not runs:
        raise AnalysisError(f"{folder}: no study.json and no history.h5 below it")
    return runs_report(folder, runs, out_dir)


def plot_history(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """The plots of one run (training, residuals, per-rank timing, method columns)."""
    run = load_run(path)
    if not run.n_steps:
        raise AnalysisError(f"{path}: the history has no steps yet")
    out_dir = Path(out) if out else run.folder
    if out_dir.exists() and not out_dir.is_dir():
        raise AnalysisError(f"--out {out_dir} is a file, not a folder: choose another --out")
    title = f"{run.label}, N = {run.layers}"
    written = [w for w in _run_plots([run], title, out_dir) if w is not None]
    if run.timing:
        ranks = run.timing["compute"].shape[1]
        parts = {c: [float(np.nanmedian(_after_first(run.timing[c])[:, k])) for k in range(ranks)]
                 for c in ("compute", "comm", "wait")}
        written.append(plots.plot_timing([str(k) for k in range(ranks)], parts, "rank",
                                         f"{title}: time per step", out_dir / "timing.png"))
    return written
