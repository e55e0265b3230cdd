"""History, checkpoints and exact restart (issue 5), through the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_failures import MPIEXEC, ROOT, mpirun

from mgrit_nn.data import load_dataset
from mgrit_nn.io.checkpoint import CheckpointError, open_checkpoint

SMALL = ["--set", "data.n_train=48", "--set", "data.n_val=16", "--set", "data.batch_size=16",
         "--set", "model.layers=16", "--set", "model.width=4", "--quiet"]


def train(n: int, out, *args: str, steps: int = 20) -> subprocess.CompletedProcess:
    p = mpirun(n, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(out),
                   "--set", f"train.steps={steps}", *SMALL, *args])
    assert p.returncode == 0, p.stderr
    return p


def losses(out) -> np.ndarray:
    with h5py.File(out / "history.h5", "r") as f:
        assert list(f["steps/step"][()]) == list(range(1, len(f["steps/step"]) + 1))
        return f["steps/loss"][()]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_resume_same_ranks_is_bitwise(tmp_path, dtype):
    d = ["--set", f"runtime.dtype={dtype}", "--set", "checkpoint.every=5"]
    train(2, tmp_path / "straight", *d)
    train(2, tmp_path / "split", *d, steps=10)
    train(2, tmp_path / "split", *d, "--resume", "latest")
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert len(a) == len(b) == 20
    assert np.array_equal(a[10:], b[10:])


def test_resume_lbfgs_keeps_its_pairs(tmp_path):
    """L-BFGS' (s, y) pairs and rho_k travel through the checkpoint: a resumed run takes the
    same steps as the straight one (full batch, so the pairs are in use)."""
    d = ["--set", "train.optimizer=lbfgs", "--set", "train.lr=1.0", "--set", "train.method=mgrit",
         "--set", "data.batch_size=0", "--set", "checkpoint.every=4"]
    train(2, tmp_path / "straight", *d, steps=8)
    train(2, tmp_path / "split", *d, steps=4)
    with h5py.File(tmp_path / "split/checkpoints/step_00000004.h5") as f:
        assert int(f.attrs["opt_n_pairs"]) >= 2 and "s_0" in f["optimizer"]
    train(2, tmp_path / "split", *d, "--resume", "latest", steps=8)
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert len(a) == len(b) == 8
    assert np.array_equal(a, b)


# resume on another number of ranks: test_shards.py (4 -> 4 bitwise, 3, 2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_sigterm_writes_checkpoint_and_exits_75(tmp_path, sig):
    """SIGTERM (SLURM) and SIGINT (Ctrl-C) both end the job after the step, with a
    checkpoint."""
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "train", "configs/peaks.yaml",
           "--out", str(out), "--set", "train.steps=1000000", "--set", "checkpoint.every=100000",
           *SMALL]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "history.h5").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    p.send_signal(sig)                      # mpiexec forwards it to every rank
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 75, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["stopped_by_signal"]
    ckpt = out / "checkpoints" / f"step_{result['steps']:08d}.h5"
    open_checkpoint(ckpt).close()


def test_second_interrupt_stops_at_once_and_keeps_the_history(tmp_path):
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "train", "configs/peaks.yaml",
           "--out", str(out), "--set", "train.steps=1000000", "--set", "model.layers=512",
           "--set", "data.n_train=20000", "--set", "data.n_val=0", "--quiet"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "history.h5").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=30)
    assert p.returncode != 75, stderr        # no stop checkpoint (the exit status is mpiexec's)
    assert time.time() - t0 < 10
    assert not list((out / "checkpoints").glob("*.h5")) if (out / "checkpoints").exists() \
        else True
    for _ in range(100):                     # the ranks may end just after mpiexec
        try:
            losses(out)                      # the rows written so far are readable
            break
        except BlockingIOError:
            time.sleep(0.1)
    else:
        losses(out)


def test_kill9_never_damages_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "train", "configs/peaks.yaml",
           "--out", str(out), "--set", "train.steps=1000000", "--set", "checkpoint.every=1",
           "--set", "checkpoint.keep=2", *SMALL]
    for delay in (2.0, 2.7, 3.3):
        p = subprocess.Popen(cmd + (["--resume", "latest"] if delay > 2.0 else []), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        deadline = time.time() + 60
        while not list((out / "checkpoints").glob("step_*.h5")) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(delay)
        os.killpg(p.pid, signal.SIGKILL)     # mpiexec and every rank, mid-whatever
        p.wait(timeout=30)
        files = sorted((out / "checkpoints").glob("step_*.h5"))
        assert files
        open_checkpoint(files[-1]).close()     # the newest complete one is loadable


def test_corrupt_or_foreign_checkpoint_is_refused(tmp_path):
    out = tmp_path / "run"
    train(1, out, steps=4)
    ckpt = out / "checkpoints" / "step_00000004.h5"
    p = mpirun(2, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(tmp_path / "b"),
                   *SMALL, "--set", "model.width=5", "--resume", str(ckpt)])
    assert p.returncode == 2 and p.stderr.count("model/opening/weight has shape") == 1, p.stderr
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        open_checkpoint(ckpt)
    p = mpirun(2, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(out), *SMALL,
                   "--resume", str(ckpt)])
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count(f"checkpoint {ckpt}") == 1, p.stderr


def test_resume_latest_skips_broken_newest_checkpoints_and_stale_tmp_files(tmp_path):
    """The newest checkpoint (sharded: 2 ranks) lost a shard, the one before is truncated,
    and a crashed write left a .tmp: --resume latest says which it skipped, continues from
    the newest that verifies, bitwise as if straight, and removes the .tmp."""
    d = ["--set", "checkpoint.every=5", "--set", "checkpoint.keep=0",
         "--set", "checkpoint.layout=sharded"]     # auto, where h5py has MPI: collective
    train(2, tmp_path / "straight", *d, steps=20)
    out = tmp_path / "split"
    train(2, out, *d, steps=15)
    newest = out / "checkpoints" / "step_00000015.h5"
    with h5py.File(newest, "r") as f:
        shard = newest.parent / f.attrs["shards_dir"] / "rank_00001.h5"
    with h5py.File(shard, "r+") as s:        # one value changed, the shard still complete
        s["model/layers/00015/bias"][0] += 1.0
    with pytest.raises(CheckpointError, match="rank_00001.h5 is corrupt"):
        open_checkpoint(newest)
    shard.unlink()
    with pytest.raises(CheckpointError, match="rank_00001.h5 does not exist.*copy or move both"):
        open_checkpoint(newest, checksum=False)
    info = mpirun(1, ["-m", "mgrit_nn", "info", str(newest)])
    assert "NOT USABLE" in info.stdout and "does not exist" in info.stdout, info.stdout
    second = out / "checkpoints" / "step_00000010.h5"
    second.write_bytes(second.read_bytes()[:1000])
    stale = out / "checkpoints" / "step_00000016.h5.tmp"
    stale.write_bytes(b"partial")
    for content in ("bytes", "hdf5"):        # not HDF5; HDF5 with the model half written
        if content == "hdf5":
            with h5py.File(stale, "w") as f:
                f.create_group("model")
        info = mpirun(1, ["-m", "mgrit_nn", "info", str(stale)])
        assert info.returncode == 2 and "Traceback" not in info.stderr, info.stderr
        assert len(info.stderr.strip().splitlines()) == 1, info.stderr
    p = train(2, out, *d, "--resume", "latest", steps=20)
    for skipped in ("step_00000015.h5", "step_00000010.h5"):
        assert p.stderr.count(f"skipped {skipped}") == 1, p.stderr
    assert not stale.exists()
    assert np.array_equal(losses(tmp_path / "straight"), losses(out))


def test_two_runs_on_one_out_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mgrit_nn", "train", "configs/peaks.yaml",
           "--out", str(out), "--set", "train.steps=1000000", "--set", "checkpoint.every=100000",
           *SMALL]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 60
    while not (out / "history.h5").exists() and time.time() < deadline:
        time.sleep(0.2)
    second = mpirun(2, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(out),
                        *SMALL, "--resume", "latest"])
    assert first.poll() is None                  # the first run goes on
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("is in use by the run of pid") == 1, second.stderr
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 75, stderr
    losses(out)                                  # its history is intact
    assert not (out / ".lock").exists()


def test_fresh_run_into_a_used_out_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    sharded = ["--set", "checkpoint.layout=sharded"]
    train(2, out, "--set", "checkpoint.every=5", *sharded, steps=10)

    def files():       # every file under checkpoints/ (2 ranks: main files and shards)
        return {str(f.relative_to(out)): f.read_bytes()
                for f in (out / "checkpoints").rglob("*") if f.is_file()}
    before = files()
    assert len(before) == 2 * 3                  # steps 5, 10: a main file and 2 shards each
    p = mpirun(2, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(out), *SMALL,
                   "--set", "train.steps=3"])
    assert p.returncode == 2 and p.stderr.count("holds the checkpoints of an earlier run") == 1
    assert files() == before
    assert len(losses(out)) == 10
    train(2, out, "--overwrite", *sharded, steps=3)
    assert len(losses(out)) == 3
    assert sorted(f.name.split(".")[0] for f in (out / "checkpoints").iterdir()) == \
        ["step_00000003"] * 2                     # the main file and its shard folder


def test_the_lock_of_an_ended_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    train(1, out, steps=2)
    assert not (out / ".lock").exists()


def test_resume_names_every_changed_key(tmp_path):
    out = tmp_path / "run"
    train(2, out, "--set", "data.batch_size=0", steps=2)
    p = train(2, out, "--set", "data.batch_size=8", "--set", "train.lr=0.02", "--resume",
              "latest", steps=4)
    lines = [ln for ln in p.stderr.splitlines() if "differs from its run" in ln]
    assert len(lines) == 1, p.stderr
    assert "data.batch_size: 0 -> 8" in lines[0] and "train.lr: 0.01 -> 0.02" in lines[0]
    assert "train.steps" not in lines[0]


def test_resume_with_another_optimizer_is_one_message(tmp_path):
    out = tmp_path / "run"
    train(2, out, steps=2)
    p = mpirun(2, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(out), *SMALL,
                   "--set", "train.optimizer=sgd", "--resume", "latest"])
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("was written by optimizer adam") == 1, p.stderr


def test_plain_h5py_rebuilds_the_network_and_its_logged_loss(tmp_path):
    """Full-batch exact training: the loss logged at step k+1 is the loss of checkpoint k."""
    out = tmp_path / "run"
    train(2, out, "--set", "train.method=mgrit", "--set", "data.batch_size=0",
          "--set", "checkpoint.every=1", "--set", "checkpoint.keep=0", "--set",
          "mgrit.tol=1e-12", "--set", "checkpoint.layout=sharded", steps=4)
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


def test_init_writes_step_zero_and_init_from_uses_it(tmp_path):
    p = mpirun(1, ["-m", "mgrit_nn", "init", "configs/peaks.yaml", "--out", str(tmp_path),
                   *SMALL[:-1]])
    assert p.returncode == 0, p.stderr
    ckpt = tmp_path / "checkpoints" / "step_00000000.h5"
    open_checkpoint(ckpt).close()
    a = train(2, tmp_path / "a", "--init-from", str(ckpt), steps=3)
    b = train(2, tmp_path / "b", steps=3)
    la, lb = (json.loads(x.stdout.strip().splitlines()[-1])["loss"] for x in (a, b))
    assert la == lb                          # the initialized weights are the config's own
    info = mpirun(1, ["-m", "mgrit_nn", "info", str(ckpt)])
    assert "complete, checksum OK" in info.stdout and "16 layers" in info.stdout
