"""No written data is ever lost (issue 18): the history survives a damaged file and a full
disk, checkpoints of another run are never continued."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest
from test_failures import mpirun
from test_restart import SMALL, losses, train

from mgrit_nn.io.checkpoint import open_checkpoint
from mgrit_nn.io.history import History, Rows
from mgrit_nn.runtime import OutputError


def _row(k: int, **extra) -> dict:
    return {"step": k, "epoch": 0, "loss": 1.0 / k, "lr": 0.1, "fwd_iters": 2, **extra}


def test_rows_round_trip_through_a_checkpoint_group(tmp_path):
    """The checkpoint's copy holds every row: a column that appears late (NaN before), the
    residual histories, timings of a run resumed on more ranks."""
    rows = Rows()
    rows.add(_row(1), [1.0, 0.1], [2.0], np.ones((2, 3)))
    rows.add(_row(2, violation=0.5), [1.0], [], np.full((3, 3), 2.0))
    tree = rows.state_dict()
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for group, sub in tree.items():
            for name, a in sub.items():
                f.create_dataset(f"history/{group}/{name}", data=a)
        back = Rows.from_group(f["history"])
    assert back.cols["step"] == [1, 2] and np.isnan(back.cols["violation"][0])
    assert back.cols["violation"][1] == 0.5
    assert [r.tolist() for r in back.res["fwd_residuals"]] == [[1.0, 0.1], [1.0]]
    assert [r.tolist() for r in back.res["adj_residuals"]] == [[2.0], []]
    assert [t.shape for t in back.timing] == [(2, 3), (3, 3)]
    assert len(back.upto(1)) == 1


def test_a_failed_append_is_one_output_error_and_keeps_the_rows(tmp_path, monkeypatch):
    h = History(tmp_path / "history.h5", "{}", 1, "oneshot")
    h.append(_row(1), [1.0], [1.0], np.zeros((1, 3)))

    def full(n):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(h, "_write_row", full)
    with pytest.raises(OutputError, match=r"cannot append to .*history.h5 \(after step 2; .*"
                       r"No space left on device"):
        h.append(_row(2), [1.0], [1.0], np.zeros((1, 3)))
    assert len(h.rows) == 2                       # in memory: the next checkpoint has it
    with h5py.File(tmp_path / "history.h5", "r") as f:
        assert f["steps/step"][()].tolist() == [1]


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs (root only; skipped where it cannot be mounted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_stops_the_run_with_one_message_and_loses_nothing(tmp_path, small_disk):
    d = ["--set", "checkpoint.every=5", "--set", "checkpoint.keep=3"]
    straight = tmp_path / "straight"
    train(2, straight, *d, steps=20)
    out = small_disk / "run"
    args = ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(out),
            "--set", "train.steps=20", *SMALL, *d]
    p = mpirun(2, args)
    assert p.returncode == 74, p.stderr
    said = [ln for ln in p.stderr.splitlines() if ln.startswith("mgrit-nn: error:")]
    assert len(said) == 1 and "No space left on device" in said[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not list(out.rglob("*.tmp")) and not (out / ".lock").exists()
    kept = sorted((out / "checkpoints").glob("step_*.h5"))
    for c in kept:
        open_checkpoint(c).close()
    assert len(losses(out)) >= int(kept[-1].stem[5:])    # readable, up to the checkpoint
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY)        # the disk entirely full
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    p = mpirun(2, args + ["--resume", "latest"])
    assert p.returncode == 74 and p.stderr.count("mgrit-nn: error:") == 1, p.stderr
    assert len(losses(out)) >= int(kept[-1].stem[5:])    # the retry damaged nothing
    filler.unlink()
    shutil.move(str(out), str(tmp_path / "moved"))       # to a roomy disk, and go on
    p = mpirun(2, args[:5] + [str(tmp_path / "moved")] + args[6:] + ["--resume", "latest"])
    assert p.returncode == 0, p.stderr
    assert np.array_equal(losses(tmp_path / "moved"), losses(straight))


def test_files_that_are_not_ours_are_one_line_each(tmp_path):
    """info, --resume/--init-from and report name what is wrong, never h5py's own text
    (probe cases of issue 18)."""
    from mgrit_nn.analysis import AnalysisError, report
    from mgrit_nn.commands.info import info
    from mgrit_nn.io.checkpoint import CheckpointError

    text, empty, cut = tmp_path / "a.txt", tmp_path / "e.h5", tmp_path / "cut.h5"
    text.write_text("hello")
    empty.write_bytes(b"")
    with h5py.File(tmp_path / "whole.h5", "w") as f:
        f.create_dataset("x", data=np.arange(10000.0))
    cut.write_bytes((tmp_path / "whole.h5").read_bytes()[:3000])
    cases = {tmp_path / "missing.h5": "does not exist", tmp_path: "is a directory",
             text: "is not an HDF5 file", empty: "is not an HDF5 file",
             cut: "a damaged or truncated HDF5 file"}
    for path, words in cases.items():
        with pytest.raises(ValueError, match=words):
            info(str(path))
        with pytest.raises(CheckpointError, match=f"checkpoint {path} .*{words}"):
            open_checkpoint(path)
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{not json")
    with pytest.raises(AnalysisError, match="is not a study manifest"):
        report(str(study), None)
