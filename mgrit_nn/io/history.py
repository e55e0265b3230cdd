"""``OUT/history.h5``: one row per optimization step, appended and flushed as training goes.

    attrs: config (resolved YAML), version, ranks, started, method
    /steps/<column>            (steps,)  step, epoch, loss, train_accuracy, val_loss,
                                         val_accuracy, lr, grad_norm, fwd_iters,
                                         fwd_residual, adj_iters, adj_residual, step_time_s
    /steps/<method column>     (steps,)  float columns a method adds (e.g. penalty/al:
                                         violation, beta, local_loss), NaN before they appear
    /steps/fwd_residuals       (steps,)  variable-length: the full residual history of the step
    /steps/adj_residuals       (steps,)
    /timing/{compute,comm,wait} (steps, ranks) seconds per step and rank (NaN where a
                               resumed run had fewer ranks than the widest one)

Missing values (no validation in that step, no MGRIT for serial) are NaN. A job
killed at any point leaves every flushed row readable. On resume, rows after the
checkpoint's step are dropped and training appends from there.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np

from mgrit_nn import __version__

COLUMNS = ("step", "epoch", "loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
           "grad_norm", "fwd_iters", "fwd_residual", "adj_iters", "adj_residual", "step_time_s")
INT_COLUMNS = ("step", "epoch", "fwd_iters", "adj_iters")
TIMERS = ("compute", "comm", "wait")


class History:
    """Rank 0's writer of the history file."""

    def __init__(self, path: Path, config_yaml: str, ranks: int, method: str,
                 resume_step: int | None = None) -> None:
        self.path, self.ranks = path, ranks
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.is_file():
            self.f = h5py.File(path, "a")
            self._truncate(resume_step)
        else:
            self.f = h5py.File(path, "w")
            self.f.attrs.update({"config": config_yaml, "version": __version__, "ranks": ranks,
                                 "method": method,
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            g = self.f.create_group("steps")
            for c in COLUMNS:
                g.create_dataset(c, (0,), maxshape=(None,),
                                 dtype="i8" if c in INT_COLUMNS else "f8")
            vlen = h5py.vlen_dtype(np.float64)
            for c in ("fwd_residuals", "adj_residuals"):
                g.create_dataset(c, (0,), maxshape=(None,), dtype=vlen)
            t = self.f.create_group("timing")
            for c in TIMERS:
                t.create_dataset(c, (0, ranks), maxshape=(None, None), dtype="f8",
                                 fillvalue=np.nan)
        self.f.flush()

    def _truncate(self, step: int) -> None:
        steps = self.f["steps/step"][()]
        keep = int(np.searchsorted(steps, step, side="right"))
        for ds in list(self.f["steps"].values()) + list(self.f["timing"].values()):
            ds.resize(keep, axis=0)
        for ds in self.f["timing"].values():      # resumed on more ranks: more columns (NaN)
            if ds.shape[1] < self.ranks:
                ds.resize(self.ranks, axis=1)
        self.f.attrs["resumed"] = f"{self.f.attrs.get('resumed', '')} {step}".strip()

    def append(self, row: dict, fwd: list[float], adj: list[float], timing: np.ndarray) -> None:
        g = self.f["steps"]
        n = g["step"].shape[0]
        for c in COLUMNS:
            g[c].resize(n + 1, axis=0)
            g[c][n] = row.get(c, np.nan)
        for c in row:                           # a method's own columns, created when first seen
            if c not in g:
                g.create_dataset(c, (n,), maxshape=(None,), dtype="f8", fillvalue=np.nan)
        for c in set(g) - set(COLUMNS) - {"fwd_residuals", "adj_residuals"}:
            g[c].resize(n + 1, axis=0)
            g[c][n] = row.get(c, np.nan)
        for c, values in (("fwd_residuals", fwd), ("adj_residuals", adj)):
            g[c].resize(n + 1, axis=0)
            g[c][n] = np.asarray(values, dtype=np.float64)
        for k, c in enumerate(TIMERS):
            ds = self.f["timing"][c]
            ds.resize(n + 1, axis=0)
            ds[n, :self.ranks] = timing[:, k]
        self.f.flush()

    def close(self) -> None:
        self.f.close()
