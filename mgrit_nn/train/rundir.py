"""The output folder of one run: never shared by two runs, never mixed with an old one.

``claim`` (rank 0, before anything is written) takes ``OUT/.lock`` for the run's lifetime:
a second run on the same folder is refused at once, naming the holder. A lock whose holder
is gone (same host, no such process; or the same SLURM job, requeued) is taken over. A
fresh run into a folder that holds checkpoints is refused unless it resumes them or
``--overwrite`` clears the folder: otherwise pruning would delete the new run's
checkpoints and ``--resume latest`` would continue the old run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from mgrit_nn.io.checkpoint import free_space
from mgrit_nn.runtime import OutputError, UsageError

log = logging.getLogger("mgrit_nn.train")
LOCK = ".lock"
OUTPUTS = ("history.h5", "history.h5.tmp", "history.h5.damaged", "result.json", "config.yaml",
           "checkpoints")


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "job": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _gone(holder: dict, path: Path) -> bool:
    """Whether the lock's holder has ended (or is this job, requeued). A lock that says
    nothing, and has said nothing for a minute, was left by a writer that failed."""
    if not holder:
        try:
            return time.time() - path.stat().st_mtime > 60
        except OSError:
            return True
    if holder.get("job") and holder.get("job") == os.environ.get("SLURM_JOB_ID"):
        return True
    if holder.get("host") != socket.gethostname():
        return False                   # cannot tell: another machine's process
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _take_lock(out: Path) -> None:
    path = out / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if not _gone(holder, path):
                raise UsageError(
                    f"--out {out} is in use by the run of pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} (since {holder.get('started', '?')}); a second "
                    "run would mix their files: wait for it or choose another --out (if no "
                    f"run uses it any more, delete {path})") from None
            log.info("took over the lock of an ended run: %s", holder)
            path.unlink(missing_ok=True)
            continue
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(_me(), fh)
        except OSError as exc:                      # e.g. a full disk: leave no empty lock
            path.unlink(missing_ok=True)
            raise OutputError(f"--out {out}: cannot write the lock {path} "
                              f"({free_space(out)}): {exc}") from None
        return
    raise UsageError(f"--out {out}: cannot take the lock {path}")


def claim(out: Path, resume: bool, overwrite: bool) -> None:
    """Lock ``out`` for this run (rank 0); refuse to mix a fresh run with an old one."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    _take_lock(out)
    old = sorted((out / "checkpoints").glob("step_*.h5"))
    if overwrite:
        for name in OUTPUTS:
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    elif old and not resume:
        release(out)
        raise UsageError(
            f"--out {out} holds the checkpoints of an earlier run ({len(old)}, newest "
            f"{old[-1].name}): continue it with --resume latest, start over with --overwrite "
            "(deletes its history and checkpoints), or choose another --out")


def release(out: Path) -> None:
    """Give the lock back if this process holds it."""
    path = out / LOCK
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
