"""Checkpoints and exact restart through the train command (issues 5, 9, 17, 18), run in
this process on the part's ranks: what ``mpiexec -n P python -m mgrit_nn train ...`` does
after its start-up. What needs a process of its own (a signal, kill -9, a second live run,
a rank that aborts the job, a full disk) stays in the serial tests (tests/test_restart.py,
tests/test_outputs.py), which start ``mpiexec``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import WORLD, datasets, on_rank_0, ranks, refused

from mgrit_nn.data import load_dataset
from mgrit_nn.io.checkpoint import CheckpointError, open_checkpoint

pytestmark = pytest.mark.mpi

SMALL = ["--set", "data.n_train=48", "--set", "data.n_val=16", "--set", "data.batch_size=16",
         "--set", "model.layers=16", "--set", "model.width=4", "--quiet"]


@pytest.fixture
def train(train_command):
    """``train(out, *args, steps=20)``: the peaks config, small."""
    run = train_command("configs/peaks.yaml", SMALL)
    return lambda out, *args, steps=20: run(out, *args, steps=steps)


_STRAIGHT: dict[str, Path] = {}


@pytest.fixture
def straight(train, tmp_path_factory) -> Path:
    """The uninterrupted float64 run (20 steps, a checkpoint every 5) that several tests
    compare with; trained once per rank count."""
    if "out" not in _STRAIGHT:
        out = Path(WORLD.bcast(str(tmp_path_factory.mktemp("straight")) if WORLD.rank == 0
                               else None))
        train(out, "--set", "checkpoint.every=5")
        _STRAIGHT["out"] = out
    return _STRAIGHT["out"]


def losses(out) -> np.ndarray:
    with h5py.File(out / "history.h5", "r") as f:
        assert list(f["steps/step"][()]) == list(range(1, len(f["steps/step"]) + 1))
        return f["steps/loss"][()]


def test_resume_same_ranks_is_bitwise(shared_tmp, train, straight):
    d = ["--set", "checkpoint.every=5"]
    train(shared_tmp / "split", *d, steps=10)
    train(shared_tmp / "split", *d, "--resume", "latest")
    a, b = losses(straight), losses(shared_tmp / "split")
    assert len(a) == len(b) == 20
    assert np.array_equal(a[10:], b[10:])


@ranks(2)
def test_resume_same_ranks_is_bitwise_in_float32(shared_tmp, train):
    d = ["--set", "runtime.dtype=float32", "--set", "checkpoint.every=5"]
    train(shared_tmp / "straight", *d)
    train(shared_tmp / "split", *d, steps=10)
    train(shared_tmp / "split", *d, "--resume", "latest")
    a, b = losses(shared_tmp / "straight"), losses(shared_tmp / "split")
    assert len(a) == len(b) == 20
    assert np.array_equal(a[10:], b[10:])


@ranks(1, 2)
def test_resume_keeps_the_adaptive_iteration_counts(shared_tmp, train):
    """oneshot.check_every: the raised counts and the steps since the start travel through
    the checkpoint (a tiny max_error raises them at every check; no tolerance stops a solve
    before its count; 64 layers: 3 levels, so 4 iterations are not yet exact)."""
    d = ["--set", "oneshot.check_every=3", "--set", "oneshot.max_error=1e-12",
         "--set", "oneshot.min_error=0", "--set", "mgrit.tol=0", "--set", "mgrit.max_iter=6",
         "--set", "model.layers=64",
         "--set", "train.fwd_iters=1", "--set", "train.adj_iters=1", "--set", "checkpoint.every=5"]
    train(shared_tmp / "straight", *d, steps=12)
    train(shared_tmp / "split", *d, steps=5)
    train(shared_tmp / "split", *d, "--resume", "latest", steps=12)
    a, b = losses(shared_tmp / "straight"), losses(shared_tmp / "split")
    assert len(a) == len(b) == 12 and np.array_equal(a, b)
    with h5py.File(shared_tmp / "split/history.h5", "r") as f:
        its = f["steps/fwd_iters"][()]
        checked = ~np.isnan(f["steps/grad_error"][()])
    assert list(np.flatnonzero(checked) + 1) == [3, 6, 9, 12]       # every 3rd step
    assert list(its) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]          # +1 after each check


def test_resume_lbfgs_keeps_its_pairs(shared_tmp, train):
    """L-BFGS' (s, y) pairs and rho_k travel through the checkpoint: a resumed run takes the
    same steps as the straight one (full batch, so the pairs are in use)."""
    d = ["--set", "train.optimizer=lbfgs", "--set", "train.lr=1.0", "--set", "train.method=mgrit",
         "--set", "data.batch_size=0", "--set", "checkpoint.every=4"]
    train(shared_tmp / "straight", *d, steps=8)
    train(shared_tmp / "split", *d, steps=4)
    with h5py.File(shared_tmp / "split/checkpoints/step_00000004.h5") as f:
        assert int(f.attrs["opt_n_pairs"]) >= 2 and "s_0" in f["optimizer"]
    train(shared_tmp / "split", *d, "--resume", "latest", steps=8)
    a, b = losses(shared_tmp / "straight"), losses(shared_tmp / "split")
    assert len(a) == len(b) == 8
    assert np.array_equal(a, b)


@ranks(2, 3)
def test_a_damaged_history_is_kept_aside_and_rebuilt_from_the_checkpoint(shared_tmp, train,
                                                                          straight):
    d = ["--set", "checkpoint.every=5"]
    out = shared_tmp / "run"
    train(out, *d, steps=10)
    first = losses(out)
    damaged = out / "history.h5"
    on_rank_0(lambda: damaged.write_bytes(damaged.read_bytes()[:1000]))  # a crash mid-write
    err = train(out, *d, "--resume", "latest")
    assert err.count("is damaged") == 1, err
    assert (out / "history.h5.damaged").is_file()          # never deleted
    b = losses(out)
    assert np.array_equal(b[:10], first)
    assert np.array_equal(b, losses(straight))


@ranks(2)
def test_latest_skips_a_checkpoint_of_another_run(shared_tmp, train):
    d = ["--set", "checkpoint.every=5"]
    ours, other = shared_tmp / "ours", shared_tmp / "other"
    train(ours, *d, steps=10)
    train(other, *d, "--set", "model.seed=3", steps=15)

    def copy():                                   # with its shard folder, if any
        for f in (other / "checkpoints").glob("step_00000015.*"):
            (shutil.copytree if f.is_dir() else shutil.copy)(f, ours / "checkpoints" / f.name)
    on_rank_0(copy)
    err = train(ours, *d, "--resume", "latest")
    assert err.count("belongs to another run") == 1, err
    assert len(losses(ours)) == 20                # contiguous: continued from step 10
    with h5py.File(ours / "history.h5", "r") as f, \
            h5py.File(ours / "checkpoints/step_00000020.h5", "r") as c:
        assert f.attrs["run_id"] == c.attrs["run_id"]


@ranks(2)
def test_resume_latest_skips_broken_newest_checkpoints_and_stale_tmp_files(shared_tmp, train,
                                                                          command):
    """The newest checkpoint (sharded: 2 ranks) lost a shard, the one before is truncated,
    and a crashed write left a .tmp: --resume latest says which it skipped, continues from
    the newest that verifies, bitwise as if straight, and removes the .tmp."""
    d = ["--set", "checkpoint.every=5", "--set", "checkpoint.keep=0",
         "--set", "checkpoint.layout=sharded"]     # auto, where h5py has MPI: collective
    train(shared_tmp / "straight", *d, steps=20)
    out = shared_tmp / "split"
    train(out, *d, steps=15)
    newest = out / "checkpoints" / "step_00000015.h5"
    second = out / "checkpoints" / "step_00000010.h5"
    stale = out / "checkpoints" / "step_00000016.h5.tmp"

    def damage():                            # one rank damages the files and asks info
        with h5py.File(newest, "r") as f:
            shard = newest.parent / f.attrs["shards_dir"] / "rank_00001.h5"
        with h5py.File(shard, "r+") as s:    # one value changed, the shard still complete
            s["model/layers/00015/bias"][0] += 1.0
        with pytest.raises(CheckpointError, match="rank_00001.h5 is corrupt"):
            open_checkpoint(newest)
        shard.unlink()
        with pytest.raises(CheckpointError,
                           match="rank_00001.h5 does not exist.*copy or move both"):
            open_checkpoint(newest, checksum=False)
        code, said, _ = command("info", newest)
        assert "NOT USABLE" in said and "does not exist" in said, said
        second.write_bytes(second.read_bytes()[:1000])
        stale.write_bytes(b"partial")
        for content in ("bytes", "hdf5"):    # not HDF5; HDF5 with the model half written
            if content == "hdf5":
                with h5py.File(stale, "w") as f:
                    f.create_group("model")
            code, _, err = command("info", stale)
            assert code == 2 and "Traceback" not in err, err
            assert len(err.strip().splitlines()) == 1, err
    on_rank_0(damage)
    err = train(out, *d, "--resume", "latest", steps=20)
    for skipped in ("step_00000015.h5", "step_00000010.h5"):
        assert err.count(f"skipped {skipped}") == 1, err
    assert not stale.exists()
    assert np.array_equal(losses(shared_tmp / "straight"), losses(out))


@ranks(2)
def test_fresh_run_into_a_used_out_is_refused_unless_overwrite(shared_tmp, train, command):
    out = shared_tmp / "run"
    sharded = ["--set", "checkpoint.layout=sharded"]
    train(out, "--set", "checkpoint.every=5", *sharded, steps=10)

    def files():       # every file under checkpoints/ (2 ranks: main files and shards)
        return {str(f.relative_to(out)): f.read_bytes()
                for f in (out / "checkpoints").rglob("*") if f.is_file()}
    before = files()
    assert len(before) == 2 * 3                  # steps 5, 10: a main file and 2 shards each
    said = refused(command, "train", "configs/peaks.yaml", "--out", out, *SMALL,
                   "--set", "train.steps=3")
    assert said.count("holds the checkpoints of an earlier run") == 1, said
    assert files() == before
    assert len(losses(out)) == 10
    train(out, "--overwrite", *sharded, steps=3)
    assert len(losses(out)) == 3
    assert sorted(f.name.split(".")[0] for f in (out / "checkpoints").iterdir()) == \
        ["step_00000003"] * 2                     # the main file and its shard folder


def test_corrupt_or_foreign_checkpoint_is_refused(shared_tmp, train, command):
    out = shared_tmp / "run"
    train(out, steps=4)
    ckpt = out / "checkpoints" / "step_00000004.h5"
    said = refused(command, "train", "configs/peaks.yaml", "--out", shared_tmp / "b", *SMALL,
                   "--set", "model.width=5", "--resume", ckpt)
    assert said.count("model/opening/weight has shape") == 1, said

    def cut():
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        with pytest.raises(CheckpointError):
            open_checkpoint(ckpt)
    on_rank_0(cut)
    said = refused(command, "train", "configs/peaks.yaml", "--out", out, *SMALL,
                   "--resume", ckpt)
    assert said.count(f"checkpoint {ckpt}") == 1, said


def test_the_lock_of_an_ended_run_is_taken_over(shared_tmp, train):
    out = shared_tmp / "run"

    def lock():
        out.mkdir()
        dead = subprocess.Popen(["true"])
        dead.wait()                          # a pid no process has now
        (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    on_rank_0(lock)
    train(out, steps=2)
    assert not (out / ".lock").exists()


def test_resume_names_every_changed_key(shared_tmp, train):
    out = shared_tmp / "run"
    train(out, "--set", "data.batch_size=0", steps=2)
    err = train(out, "--set", "data.batch_size=8", "--set", "train.lr=0.02", "--resume",
                "latest", steps=4)
    lines = [ln for ln in err.splitlines() if "differs from its run" in ln]
    assert len(lines) == 1, err
    assert "data.batch_size: 0 -> 8" in lines[0] and "train.lr: 0.01 -> 0.02" in lines[0]
    assert "train.steps" not in lines[0]


def test_resume_with_another_optimizer_is_one_message(shared_tmp, train, command):
    out = shared_tmp / "run"
    train(out, steps=2)
    said = refused(command, "train", "configs/peaks.yaml", "--out", out, *SMALL,
                   "--set", "train.optimizer=sgd", "--resume", "latest")
    assert said.count("was written by optimizer adam") == 1, said


@ranks(2)
def test_plain_h5py_rebuilds_the_network_and_its_logged_loss(shared_tmp, train):
    """Full-batch exact training: the loss logged at step k+1 is the loss of checkpoint k."""
    out = shared_tmp / "run"
    train(out, "--set", "train.method=mgrit", "--set", "data.batch_size=0",
          "--set", "checkpoint.every=1", "--set", "checkpoint.keep=0", "--set",
          "mgrit.tol=1e-12", "--set", "checkpoint.layout=sharded", "--set",
          "runtime.dtype=float64", steps=4)                # rebuilt to round-off below
    data = load_dataset("peaks", None, 48, 16, 0)
    with h5py.File(out / "checkpoints" / "step_00000003.h5", "r") as f:
        assert f.attrs["layout"] == "sharded"        # 2 ranks: read through virtual datasets
        m = {k: torch.from_numpy(f[f"model/{k}"][()]) for k in
             ("opening/weight", "opening/bias", "classifier/weight", "classifier/bias")}
        layers = [(torch.from_numpy(f[f"model/layers/{j:05d}/weight"][()]),
                   torch.from_numpy(f[f"model/layers/{j:05d}/bias"][()])) for j in range(16)]
        h = 1.0 / 16
    u = torch.tanh(data.x_train @ m["opening/weight"].T + m["opening/bias"])
    for K, b in layers:
        u = u + h * torch.tanh(u @ K.T + b)
    loss = F.cross_entropy(u @ m["classifier/weight"].T + m["classifier/bias"], data.y_train)
    logged = losses(out)[3]
    assert abs(loss.item() - logged) <= 1e-9 * logged


def test_init_writes_step_zero_and_init_from_uses_it(shared_tmp, train, command):
    code, _, err = command("init", "configs/peaks.yaml", "--out", shared_tmp, *SMALL[:-1])
    assert WORLD.allgather(code) == [0] * WORLD.size, err
    ckpt = shared_tmp / "checkpoints" / "step_00000000.h5"
    open_checkpoint(ckpt).close()
    train(shared_tmp / "a", "--init-from", ckpt, steps=3)
    train(shared_tmp / "b", steps=3)
    la, lb = (json.loads((shared_tmp / r / "result.json").read_text())["loss"] for r in "ab")
    assert la == lb                          # the initialized weights are the config's own

    def info():
        _, said, _ = command("info", ckpt)
        assert "complete, checksum OK" in said and "16 layers" in said, said
    on_rank_0(info)


@ranks(2)
def test_sharded_and_single_layouts_hold_the_same_arrays(shared_tmp, train, command):
    """The same 2-rank run written both ways: a plain h5py reader sees the same datasets,
    bit for bit (model, optimizer, warm starts, history), the sharded one through
    virtual datasets onto one shard per rank."""
    for layout in ("single", "sharded"):
        train(shared_tmp / layout, "--set", f"checkpoint.layout={layout}", steps=4)
    single = shared_tmp / "single/checkpoints/step_00000004.h5"
    sharded = shared_tmp / "sharded/checkpoints/step_00000004.h5"
    a, b = datasets(single), datasets(sharded)
    assert sorted(a) == sorted(b) and "warm/forward" in a and "optimizer/exp_avg" in a
    # what differs between any two runs: timings, and torch's global RNG (which the runs
    # never seed; the methods draw from their own generators)
    timed = [k for k in a if k.startswith("history/timing/") or k.endswith("_s")] + \
        ["rng/torch"]
    assert "history/steps/step_time_s" in timed
    for k in sorted(set(a) - set(timed)):
        nan = a[k].dtype.kind == "f"
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=nan), k
    with h5py.File(sharded, "r") as f:
        assert f.attrs["layout"] == "sharded" and len(f.attrs["shards_sha256"]) == 2
        assert f["model/layers/00015/weight"].is_virtual and f["warm/forward"].is_virtual
        folder = sharded.parent / f.attrs["shards_dir"]
    assert sorted(p.name for p in folder.iterdir()) == ["rank_00000.h5", "rank_00001.h5"]
    with h5py.File(folder / "rank_00001.h5", "r") as s:     # the second rank's own layers
        assert "model/layers/00015/weight" in s and "model/layers/00000/weight" not in s

    def info():
        _, said, _ = command("info", sharded)
        assert "complete, checksum OK" in said and "sharded, 2 shards" in said, said
    on_rank_0(info)
