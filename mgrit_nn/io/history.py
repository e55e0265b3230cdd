"""``OUT/history.h5``: one row per optimization step, appended and flushed as training goes.

    attrs: config (resolved YAML), version, ranks, started, method, run_id, (resumed)
    /steps/<column>            (steps,)  step, epoch, loss, train_accuracy, val_loss,
                                         val_accuracy, lr, grad_norm, fwd_iters,
                                         fwd_residual, adj_iters, adj_residual, step_time_s
    /steps/<method column>     (steps,)  float columns a method adds (e.g. penalty/al:
                                         violation, beta, local_loss), NaN before they appear
    /steps/fwd_residuals       (steps,)  variable-length: the full residual history of the step
    /steps/adj_residuals       (steps,)
    /timing/{compute,comm,wait} (steps, ranks) seconds per step and rank (NaN where a
                               resumed run had fewer ranks than the widest one)

Missing values (no validation in that step, no MGRIT for serial) are NaN.

No row is ever lost: rank 0 keeps the rows in memory and every checkpoint stores them
up to its step (:meth:`History.state_dict`, the checkpoint's ``/history`` group). The file
is only ever created whole (temporary file, fsync, rename: a fresh run, and a resume,
which rebuilds it from the checkpoint's rows and so never writes into a file a crash or a
full disk may have damaged) and then appended to. A damaged file found on resume is kept
as ``history.h5.damaged``. A failed append (disk full) ends the run with one message.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from mgrit_nn import __version__
from mgrit_nn.io.checkpoint import (
    WRITE_ERRORS,
    free_space,
    quiet_failed_writes,
    write_failure,
)
from mgrit_nn.runtime import OutputError

COLUMNS = ("step", "epoch", "loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
           "grad_norm", "fwd_iters", "fwd_residual", "adj_iters", "adj_residual", "step_time_s")
INT_COLUMNS = ("step", "epoch", "fwd_iters", "adj_iters")
TIMERS = ("compute", "comm", "wait")
RESIDUALS = ("fwd_residuals", "adj_residuals")


class Rows:
    """The history in memory: columns, residual histories, per-rank timings."""

    def __init__(self) -> None:
        self.cols: dict[str, list[float]] = {c: [] for c in COLUMNS}
        self.res: dict[str, list[np.ndarray]] = {c: [] for c in RESIDUALS}
        self.timing: list[np.ndarray] = []          # (ranks of that step, 3)

    def __len__(self) -> int:
        return len(self.cols["step"])

    def add(self, row: dict, fwd, adj, timing: np.ndarray) -> None:
        n = len(self)
        for c in row:                              # a method's column: NaN in earlier rows
            self.cols.setdefault(c, [np.nan] * n)
        for c, values in self.cols.items():
            values.append(row.get(c, 0 if c in INT_COLUMNS else np.nan))
        self.res["fwd_residuals"].append(np.asarray(fwd, dtype=np.float64))
        self.res["adj_residuals"].append(np.asarray(adj, dtype=np.float64))
        self.timing.append(np.asarray(timing, dtype=np.float64).reshape(-1, len(TIMERS)))

    def upto(self, step: int) -> Rows:
        """The rows of steps <= ``step``."""
        keep = int(np.searchsorted(np.asarray(self.cols["step"]), step, side="right"))
        out = Rows()
        out.cols = {c: v[:keep] for c, v in self.cols.items()}
        out.res = {c: v[:keep] for c, v in self.res.items()}
        out.timing = self.timing[:keep]
        return out

    def width(self) -> int:
        return max((t.shape[0] for t in self.timing), default=0)

    def timing_array(self, ranks: int) -> np.ndarray:
        """(steps, 3, ranks) with NaN where a step had fewer ranks."""
        out = np.full((len(self), len(TIMERS), ranks), np.nan)
        for i, t in enumerate(self.timing):
            out[i, :, :t.shape[0]] = t.T
        return out

    # -- the checkpoint's copy ------------------------------------------------------------
    def state_dict(self) -> dict:
        tree: dict = {"steps": {c: np.asarray(v, dtype="i8" if c in INT_COLUMNS else "f8")
                                for c, v in self.cols.items()}}
        for c, rows in self.res.items():
            tree[c] = {"values": np.concatenate(rows) if rows else np.zeros(0),
                       "counts": np.array([len(r) for r in rows], dtype=np.int64)}
        t = self.timing_array(self.width())
        tree["timing"] = {c: t[:, k, :] for k, c in enumerate(TIMERS)}
        return tree

    @classmethod
    def from_group(cls, g: h5py.Group) -> Rows:
        """Rows from a checkpoint's ``/history`` group (or a history file: same names)."""
        out = cls()
        steps = g["steps"]
        out.cols = {c: steps[c][()].tolist() for c in steps if c not in RESIDUALS}
        for c in RESIDUALS:
            if c in steps:                                      # a history file
                out.res[c] = [np.asarray(r, dtype=np.float64) for r in steps[c][()]]
            else:
                values, counts = g[c]["values"][()], g[c]["counts"][()]
                out.res[c] = np.split(values, np.cumsum(counts)[:-1]) if len(counts) else []
        t = np.stack([g["timing"][c][()] for c in TIMERS], axis=-1)   # (steps, ranks, 3)
        out.timing = [row[~np.isnan(row).all(axis=1)] for row in t]
        return out


class History:
    """Rank 0's writer of the history file. ``rows``: the rows to start from (a resume:
    the checkpoint's); the file is then written whole, atomically, before any append."""

    def __init__(self, path: Path, config_yaml: str, ranks: int, method: str,
                 rows: Rows | None = None, attrs: dict | None = None) -> None:
        self.path, self.ranks = path, ranks
        self.rows = rows if rows is not None else Rows()
        self.attrs = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(attrs or {}),
                      "config": config_yaml, "version": __version__, "ranks": ranks,
                      "method": method}
        self.f: h5py.File | None = None
        self._guard("write", self._create)

    def _guard(self, what: str, fn) -> None:
        """Run ``fn``; a failed write (ENOSPC, EDQUOT, EIO ...) becomes one OutputError."""
        try:
            with quiet_failed_writes():
                fn()
        except WRITE_ERRORS as exc:
            if self.f is not None:
                try:
                    self.f.close()
                except Exception:  # noqa: BLE001 - the file is already failing
                    pass
                self.f = None
            step = self.rows.cols["step"][-1] if len(self.rows) else 0
            raise OutputError(
                f"cannot {what} {self.path} (after step {step}; {free_space(self.path.parent)})"
                f": {write_failure(exc)}; every row up to the "
                "newest checkpoint is kept in it: free space, then --resume latest rebuilds "
                "the history") from None

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        r, width = self.rows, max(self.ranks, self.rows.width())
        with h5py.File(tmp, "w") as f:
            f.attrs.update(self.attrs)
            g = f.create_group("steps")
            for c, values in r.cols.items():
                g.create_dataset(c, data=np.asarray(values, dtype="i8" if c in INT_COLUMNS
                                                    else "f8"), maxshape=(None,))
            vlen = h5py.vlen_dtype(np.float64)
            for c, rows in r.res.items():
                ds = g.create_dataset(c, (len(r),), maxshape=(None,), dtype=vlen)
                for i, values in enumerate(rows):
                    ds[i] = values
            t, tg = r.timing_array(width), f.create_group("timing")
            for k, c in enumerate(TIMERS):
                tg.create_dataset(c, data=t[:, k, :], maxshape=(None, None), fillvalue=np.nan)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.f = h5py.File(self.path, "a")

    def append(self, row: dict, fwd: list[float], adj: list[float], timing: np.ndarray) -> None:
        self.rows.add(row, fwd, adj, timing)
        self._guard("append to", lambda: self._write_row(len(self.rows) - 1))

    def _write_row(self, n: int) -> None:
        g, r = self.f["steps"], self.rows
        for c, values in r.cols.items():
            if c not in g:                         # a method's column, created when first seen
                g.create_dataset(c, (n,), maxshape=(None,), dtype="f8", fillvalue=np.nan)
            g[c].resize(n + 1, axis=0)
            g[c][n] = values[n]
        for c, rows in r.res.items():
            g[c].resize(n + 1, axis=0)
            g[c][n] = rows[n]
        t = r.timing[n]
        for k, c in enumerate(TIMERS):
            ds = self.f["timing"][c]
            if ds.shape[1] < t.shape[0]:
                ds.resize(t.shape[0], axis=1)
            ds.resize(n + 1, axis=0)
            ds[n, :t.shape[0]] = t[:, k]
        self.f.flush()

    def state_dict(self) -> tuple[dict, str]:
        """The rows so far as a tree of arrays, and the file's attributes as JSON (the
        checkpoint's ``/history`` group and ``history_attrs``)."""
        attrs = {k: v.item() if isinstance(v, np.generic) else v for k, v in self.attrs.items()}
        return self.rows.state_dict(), json.dumps(attrs)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def read_history(path: Path) -> tuple[Rows, dict] | str:
    """The rows and attributes of a history file that h5py reads whole, else why not."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            attrs = {k: v for k, v in f.attrs.items() if k in ("started", "resumed", "run_id")}
            return Rows.from_group(f), attrs
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:   # damaged
        return f"{type(exc).__name__}: {exc}"


def resume_rows(out: Path, checkpoint: h5py.File, step: int) -> tuple[Rows, dict, list[str]]:
    """The rows (up to ``step``) and attributes a resumed run starts its history from, and
    what to tell the user: the checkpoint's own copy of the rows when it has one, else the
    rows of ``OUT/history.h5`` (a checkpoint written before checkpoints held the history).
    A damaged history file is kept as ``history.h5.damaged``, never deleted."""
    path, notes = out / "history.h5", []
    old = read_history(path) if path.is_file() else "no such file"
    if isinstance(old, str) and path.is_file():
        aside = path.with_name("history.h5.damaged")
        os.replace(path, aside)
        notes.append(f"{path} is damaged ({old}); kept as {aside.name}, rebuilt from the "
                     "checkpoint")
    if "history" in checkpoint:
        attrs = json.loads(checkpoint.attrs.get("history_attrs", "{}"))
        return Rows.from_group(checkpoint["history"]).upto(step), attrs, notes
    if not isinstance(old, str):
        rows, attrs = old
        return rows.upto(step), attrs, notes
    notes.append(f"the history before step {step} is lost: the checkpoint has no copy of "
                 f"it and {path.name} could not be read ({old})")
    return Rows(), {}, notes


def run_id_of(path: Path) -> str | None:
    """The run id a history file names (None: no file, unreadable, or written before run
    ids existed)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return str(f.attrs["run_id"]) or None
    except (OSError, KeyError):
        return None
