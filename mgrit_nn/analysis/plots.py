"""The figures of a report, drawn headless (matplotlib's Agg canvas, no pyplot state).

Every function writes one PNG and returns its path, or None when the runs hold nothing
for that figure (e.g. no constraint violation without penalty/al runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from mgrit_nn.analysis.load import RunData

STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v")      # curves that coincide stay visible
DPI = 120


def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.4) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _rank_axis(ax, ranks: Sequence[int]) -> None:
    """Log-2 rank axis with exactly the measured rank counts as ticks."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ranks), [str(p) for p in ranks])
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = min(ranks), max(ranks)
    ax.set_xlim(lo / 1.25, hi * 1.25)
    ax.set_xlabel("MPI ranks P")
    ax.grid(True, which="major", alpha=0.3)


def _log_if_wide(ax, values: list[np.ndarray]) -> None:
    """Log y-axis where the positive values span more than a factor 20 (else linear reads
    better: a log axis over a narrow range has unreadable tick labels)."""
    v = np.concatenate([np.asarray(x, dtype=float).ravel() for x in values]) if values else []
    v = v[np.isfinite(v)] if len(v) else v
    if len(v) and (v > 0).all() and v.max() > 20 * v.min():
        ax.set_yscale("log")


def _step_axis(ax) -> None:
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _legend_below(fig: Figure, ax) -> None:
    """The legend under the axes: scaling plots have lines in every corner."""
    n = len(ax.get_legend_handles_labels()[1])
    fig.legend(loc="outside lower center", ncols=min(3, n), fontsize="small", frameon=False)


def _measured(i: int) -> dict:
    """A measured curve: colour and an open marker of its own."""
    return {"color": f"C{i}", "marker": MARKERS[i % len(MARKERS)], "markerfacecolor": "none"}


def _style(i: int) -> dict:
    return {"color": f"C{i % 10}", "linestyle": STYLES[(i // 10 + i) % len(STYLES)]}


# -- scaling -------------------------------------------------------------------------------------
def plot_runtime(curves: dict[str, tuple[list[int], list[float]]],
                 ideal: tuple[list[int], list[float]] | None,
                 model: tuple[list[int], list[float]] | None, title: str, path: Path) -> Path:
    """Measured times vs ranks (log-log), the ideal line and the span model's prediction."""
    fig, (ax,) = _figure()
    ranks = sorted({p for ps, _ in curves.values() for p in ps})
    for i, (name, (ps, ts)) in enumerate(curves.items()):
        ax.plot(ps, ts, label=name, **_measured(i))
    if ideal is not None:
        ax.plot(*ideal, color="0.4", linestyle="--", linewidth=1, label="ideal (one-shot)")
    if model is not None:
        ax.plot(*model, color="0.2", linestyle=":", linewidth=1.5, label="span model (one-shot)")
    ax.set_yscale("log")
    _rank_axis(ax, ranks)
    ax.set_ylabel("time [s]")
    ax.set_title(title)
    _legend_below(fig, ax)
    return _save(fig, path)


def plot_speedup(curves: dict[str, tuple[list[int], list[float]]],
                 models: dict[str, tuple[list[int], list[float]]], p_ref: int, title: str,
                 path: Path) -> Path:
    """Speed-up vs ranks (log-log) with the ideal P / P_ref and the span model."""
    fig, (ax,) = _figure()
    ranks = sorted({p for ps, _ in curves.values() for p in ps})
    for i, (name, (ps, s)) in enumerate(curves.items()):
        ax.plot(ps, s, label=name, **_measured(i))
    for i, (name, (ps, s)) in enumerate(models.items()):
        ax.plot(ps, s, color=f"C{i}", linestyle=":", linewidth=1.5, label=name)
    ax.plot(ranks, [p / p_ref for p in ranks], color="0.4", linestyle="--", linewidth=1,
            label=f"ideal P / {p_ref}")
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    _rank_axis(ax, ranks)
    ax.set_ylabel(f"speed-up over {p_ref} rank{'s' if p_ref != 1 else ''}")
    ax.set_title(title)
    _legend_below(fig, ax)
    return _save(fig, path)


def plot_efficiency(curves: dict[str, tuple[list[int], list[float]]], title: str,
                    path: Path) -> Path:
    """Parallel efficiency vs ranks, 1 = ideal."""
    fig, (ax,) = _figure()
    ranks = sorted({p for ps, _ in curves.values() for p in ps})
    top = 1.0
    for i, (name, (ps, e)) in enumerate(curves.items()):
        ax.plot(ps, e, label=name, **_measured(i))
        top = max(top, *[v for v in e if np.isfinite(v)], 0.0)
    ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1, label="ideal")
    _rank_axis(ax, ranks)
    ax.set_ylim(0, top * 1.1)
    ax.set_ylabel("parallel efficiency")
    ax.set_title(title)
    _legend_below(fig, ax)
    return _save(fig, path)


def plot_timing(groups: list[str], parts: dict[str, list[float]], xlabel: str, title: str,
                path: Path) -> Path:
    """Stacked bars of compute / comm / wait seconds per step (medians)."""
    fig, (ax,) = _figure()
    x = np.arange(len(groups))
    bottom = np.zeros(len(groups))
    for i, (name, values) in enumerate(parts.items()):
        v = np.nan_to_num(np.asarray(values, dtype=float))
        ax.bar(x, v, bottom=bottom, color=f"C{i}", label=name, width=0.6)
        bottom += v
    ax.set_xticks(x, groups)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("seconds per training step\n(median over the steps after the first)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


# -- training runs -------------------------------------------------------------------------------
def plot_training(runs: list[RunData], title: str, path: Path) -> Path | None:
    """Loss (log) and accuracy vs step for several runs on the same axes."""
    runs = [r for r in runs if r.n_steps]
    if not runs:
        return None
    fig, (ax_l, ax_a) = _figure(2, width=5.6)
    for i, r in enumerate(runs):
        st, kw = r.steps["step"], _style(i)
        ax_l.plot(st, r.steps["loss"], label=r.label, **kw)
        ax_a.plot(st, r.steps["train_accuracy"], **kw)
        val = r.steps.get("val_accuracy")
        if val is not None and np.isfinite(val).any():
            ok = np.isfinite(val)
            ax_a.plot(st[ok], val[ok], marker="o", markersize=4, color=kw["color"],
                      linestyle="none")
    _log_if_wide(ax_l, [r.steps["loss"] for r in runs])
    ax_l.set_ylabel("training loss (batch)")
    ax_a.set_ylabel("accuracy")
    ax_a.set_ylim(0, 1.02)
    for ax in (ax_l, ax_a):
        _step_axis(ax)
    ax_l.legend(fontsize="small")                  # one legend: the colours are shared
    ax_l.set_title("loss")
    ax_a.set_title("accuracy (lines: batch, dots: validation set)")
    fig.suptitle(title)
    return _save(fig, path)


def plot_residuals(runs: list[RunData], title: str, path: Path) -> Path | None:
    """Forward and adjoint MGRIT residual at the end of every training step (semilog)."""
    runs = [r for r in runs if r.n_steps and r.layer_parallel()]
    if not runs:
        return None
    fig, axes = _figure(2, width=5.6)
    for ax, col, name in zip(axes, ("fwd_residual", "adj_residual"), ("forward", "adjoint"),
                             strict=True):
        for i, r in enumerate(runs):
            v = r.steps[col]
            ok = np.isfinite(v) & (v > 0)
            ax.plot(r.steps["step"][ok], v[ok], label=r.label, alpha=0.85, **_style(i))
        ax.set_yscale("log")
        _step_axis(ax)
        ax.set_ylabel(f"{name} residual norm after the step's last iteration")
        ax.set_title(f"{name} MGRIT")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def plot_convergence(runs: list[RunData], title: str, path: Path) -> Path | None:
    """Residual vs MGRIT iteration within one solve, for the first, middle and last step of
    every run whose solves take three or more iterations (e.g. method mgrit)."""
    picked = []
    for r in runs:
        long = [k for k, h in enumerate(r.fwd_residuals) if len(h) >= 3]
        if long:
            picked.append((r, sorted({long[0], long[len(long) // 2], long[-1]})))
    if not picked:
        return None
    fig, axes = _figure(2, width=5.6)
    for ax, attr, name in zip(axes, ("fwd_residuals", "adj_residuals"), ("forward", "adjoint"),
                              strict=True):
        for i, (r, ks) in enumerate(picked):
            for j, k in enumerate(ks):
                h = getattr(r, attr)[k] if k < len(getattr(r, attr)) else np.array([])
                if len(h):
                    ax.plot(np.arange(1, len(h) + 1), h, color=f"C{i % 10}", marker=".",
                            linestyle=STYLES[j % len(STYLES)],
                            label=f"{r.label}, step {int(r.steps['step'][k])}")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("MGRIT iteration")
        ax.set_ylabel("residual norm")
        ax.set_title(f"{name} solves")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


PENALTY_COLUMNS = {"violation": "constraint violation", "beta": "penalty parameter beta",
                   "local_loss": "local (stage) loss"}


def _indexed(col: str, panel: str) -> int | None:
    """j if ``col`` is ``panel_j`` (a per-group column such as critic_loss_0), else None."""
    head, _, tail = col.rpartition("_")
    return int(tail) if head == panel and tail.isdigit() else None


def plot_columns(runs: list[RunData], columns: dict[str, str], title: str, path: Path,
                 indexed: bool = False) -> Path | None:
    """One panel per method column present in any run; with ``indexed``, columns
    ``name_0, name_1, ...`` (one per layer group) share the panel ``name``."""
    def matches(col: str, panel: str) -> bool:
        return col == panel or (indexed and _indexed(col, panel) is not None)
    present = [c for c in columns if any(matches(k, c) for r in runs for k in r.steps)]
    if not present:
        return None
    fig, axes = _figure(len(present), width=5.0)
    for ax, panel in zip(axes, present, strict=True):
        shown = []
        for i, r in enumerate(runs):
            cols = sorted((k for k in r.steps if matches(k, panel)),
                          key=lambda k: -1 if k == panel else _indexed(k, panel))
            for j, col in enumerate(cols):
                v = r.steps[col]
                ok = np.isfinite(v)
                label = r.label if col == panel else f"{r.label}, group {_indexed(col, panel)}"
                ax.plot(r.steps["step"][ok], v[ok], label=label, color=f"C{i % 10}",
                        linestyle=STYLES[j % len(STYLES)])
                shown.append(v)
        if panel in ("violation", "beta"):
            ax.set_yscale("log")       # both change by orders of magnitude
        else:
            _log_if_wide(ax, shown)
        _step_axis(ax)
        ax.set_ylabel(columns[panel])
        ax.set_title(panel)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)
