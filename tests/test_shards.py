"""Sharded checkpoints (issue 17): one shard per rank, a main file of virtual datasets."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from mpi4py import MPI
from test_restart import losses, train

from mgrit_nn.io import collective, shards
from mgrit_nn.io.checkpoint import (
    Part,
    flatten,
    open_checkpoint,
    prune,
    remove_stale,
)
from mgrit_nn.runtime import OutputError


def datasets(path) -> dict[str, np.ndarray]:
    """Every dataset of a checkpoint as a plain serial h5py reader sees it."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, v: out.update({k: v[()]}) if isinstance(v, h5py.Dataset)
                     else None)
    return out


# the same run written single and sharded: tests/mpi/test_resume.py


def test_sharded_checkpoint_of_4_ranks_resumes_on_3_and_2(tmp_path):
    """From the step-10 checkpoint of a 4-rank run: on 3 and 2 ranks the same history to
    1e-10 (each rank reads its own rows). On the same 4 ranks it is bitwise the same:
    tests/mpi/test_resume.py, whose runs are sharded on more than one rank."""
    straight = tmp_path / "straight"
    train(4, straight, "--set", "checkpoint.every=10", "--set", "checkpoint.keep=0",
          "--set", "checkpoint.layout=sharded")
    ckpt = straight / "checkpoints/step_00000010.h5"
    with h5py.File(ckpt, "r") as f:
        assert f.attrs["layout"] == "sharded" and len(f.attrs["shards_sha256"]) == 4
    a = losses(straight)
    for after in (3, 2):
        out = tmp_path / f"on{after}"
        shutil.copytree(straight, out)          # a checkpoint moves with its folder
        train(after, out, "--resume", str(out / "checkpoints/step_00000010.h5"))
        b = losses(out)
        assert len(a) == len(b) == 20
        assert np.max(np.abs(a - b) / np.abs(a)) < 1e-10, after


# a missing or altered shard, and --resume latest skipping it: test_restart.py


def write(path, step: int, value: float = 0.0):
    tree = {"model": {"w": Part(np.full((3, 2), value), 0, 3)}, "rng": {"torch": np.arange(4)}}
    return shards.write_sharded(path / f"step_{step:08d}.h5", flatten(tree), {"step": step},
                                MPI.COMM_SELF)


def test_a_write_that_fails_before_its_main_file_leaves_the_previous_one(tmp_path,
                                                                          monkeypatch):
    """The main file's rename makes the checkpoint: a failure (or a crash) before it leaves
    the previous checkpoints as they were and a folder no main file names, which the next
    run removes."""
    ckpts = tmp_path / "checkpoints"
    write(ckpts, 1, 1.0)

    def full_disk(f):
        raise OSError(28, "No space left on device")
    real = shards.write_file                  # the main file's write fails half-way
    monkeypatch.setattr(shards, "write_file", lambda p, a, at, v: real(p, a, at, full_disk))
    with pytest.raises(OutputError, match="newest complete one is step_00000001.h5"):
        write(ckpts, 2)
    monkeypatch.undo()
    assert len(list(ckpts.glob("step_00000002.*.shards"))) == 1
    assert not (ckpts / "step_00000002.h5").exists()
    with open_checkpoint(ckpts / "step_00000001.h5") as f:
        assert f["model/w"][0, 0] == 1.0
    removed = remove_stale(tmp_path)
    assert [p.name.split(".")[0] for p in removed] == ["step_00000002"]
    assert sorted(p.name.split(".")[0] for p in ckpts.iterdir()) == ["step_00000001"] * 2


def test_rewriting_a_step_and_pruning_remove_whole_sets(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        write(ckpts, step)
    write(ckpts, 3, 7.0)                     # the same step again: the old folder goes
    assert len(list(ckpts.glob("step_00000003.*.shards"))) == 1
    with open_checkpoint(ckpts / "step_00000003.h5") as f:
        assert f["model/w"][1, 1] == 7.0
    prune(tmp_path, 2)
    assert sorted(p.name.split(".")[0] for p in ckpts.iterdir()) == \
        ["step_00000002"] * 2 + ["step_00000003"] * 2
    moved = tmp_path / "moved"                # a checkpoint moves with its folder
    shutil.copytree(ckpts, moved)
    with open_checkpoint(moved / "step_00000002.h5") as f:
        assert f["model/w"].shape == (3, 2)


@pytest.mark.skipif(not collective.available(), reason="h5py is not built with MPI here "
                    "(h5py.get_config().mpi is false): docs/hdf5.md says how to build one")
def test_collective_checkpoint_is_one_file_a_single_one_equals_and_resumes(tmp_path):
    """checkpoint.layout auto with an MPI h5py: one file written by both ranks through mpio,
    bit for bit the arrays of a gathered single file; it resumes on 3 ranks to 1e-10."""
    for layout in ("single", "auto"):
        train(2, tmp_path / layout, "--set", f"checkpoint.layout={layout}",
              "--set", "checkpoint.every=10", "--set", "checkpoint.keep=0")
    a = datasets(tmp_path / "single/checkpoints/step_00000010.h5")
    ckpt = tmp_path / "auto/checkpoints/step_00000010.h5"
    b = datasets(ckpt)
    with h5py.File(ckpt, "r") as f:
        assert f.attrs["layout"] == "collective" and "shards_dir" not in f.attrs
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["step_00000010.h5",
                                                             "step_00000020.h5"]
    timed = [k for k in a if k.startswith("history/timing/") or k.endswith("_s")]
    for k in sorted(set(a) - set(timed) - {"rng/torch"}):
        nan = a[k].dtype.kind == "f"
        assert np.array_equal(a[k], b[k], equal_nan=nan), k
    out = tmp_path / "on3"
    shutil.copytree(tmp_path / "auto", out)
    train(3, out, "--resume", str(out / "checkpoints/step_00000010.h5"))
    x, y = losses(tmp_path / "auto"), losses(out)
    assert np.max(np.abs(x - y) / np.abs(x)) < 1e-10


@pytest.mark.skipif(collective.available(), reason="h5py is built with MPI here")
def test_collective_without_an_mpi_h5py_is_one_config_error():
    from mgrit_nn.config import ConfigError, load_config, validate

    with pytest.raises(ConfigError, match="checkpoint.layout: collective needs h5py built "
                                          "with MPI"):
        validate(load_config(None, ["checkpoint.layout=collective"]), 2)
