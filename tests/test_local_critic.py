"""local_critic through the command line (issue 9): exact resume on 2 and 4 ranks, one clear
error on another rank count or a bad critic config, the sub-model table in result.json."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from test_failures import ROOT, mpirun

from mgrit_nn.config import ConfigError, load_config, validate

SMALL = ["--set", "train.method=local_critic", "--set", "data.n_train=48", "--set",
         "data.n_val=16", "--set", "data.batch_size=16", "--set", "model.layers=8", "--set",
         "model.width=4", "--set", "critic.hidden=6", "--set", "train.eval_every=4", "--quiet"]


def train(n: int, out, *args: str, steps: int) -> None:
    p = mpirun(n, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out", str(out),
                   "--set", f"train.steps={steps}", *SMALL, *args])
    assert p.returncode == 0, p.stderr


def datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("ranks,split", [(2, 5), (4, 2)])
def test_resume_is_bitwise(tmp_path, ranks, split):
    """Checkpoint at `split` (on 4 ranks: inside the pipeline fill-up), resume, and every
    logged column and every checkpoint array equals the uninterrupted run's bits."""
    every = ["--set", f"checkpoint.every={split}", "--set", "checkpoint.keep=0"]
    train(ranks, tmp_path / "straight", *every, steps=9)
    train(ranks, tmp_path / "split", *every, steps=split)
    train(ranks, tmp_path / "split", *every, "--resume", "latest", steps=9)
    with h5py.File(tmp_path / "straight/history.h5") as a, \
            h5py.File(tmp_path / "split/history.h5") as b:
        cols = [c for c in a["steps"] if c not in ("step_time_s", "fwd_residuals",
                                                    "adj_residuals")]
        assert {f"local_loss_{q}" for q in range(ranks - 1)} <= set(cols)
        for c in cols:
            x, y = a[f"steps/{c}"][()], b[f"steps/{c}"][()]
            if c.startswith("val_"):     # the first run also validated at its last step
                x, y = np.delete(x, split - 1), np.delete(y, split - 1)
            assert np.array_equal(x, y, equal_nan=True), c
    final = "checkpoints/step_00000009.h5"
    da, db = datasets(tmp_path / "straight" / final), datasets(tmp_path / "split" / final)
    assert da.keys() == db.keys()
    assert any(k.startswith(f"local_critic/{ranks - 2}/critic/") for k in da)
    # rng/torch: this torch seeds its global generator randomly in every new process, and no
    # training path draws from it; everything else must match bit for bit
    # history/: the checkpoint's copy of the history rows, compared as history.h5 above
    differ = [k for k in da if k != "rng/torch" and not k.startswith("history/")
              and not np.array_equal(da[k], db[k])]
    assert not differ, differ
    result = json.loads((tmp_path / "split/result.json").read_text())
    rows = result["submodels"]
    assert [r["groups"] for r in rows] == list(range(1, ranks + 1))
    assert rows[-1]["head"] == "classifier" and rows[-1]["val_accuracy"] == result["val_accuracy"]
    if ranks == 2:        # critics belong to layer groups: another rank count is refused
        p = mpirun(3, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out",
                       str(tmp_path / "split"), *SMALL, "--set", "train.steps=12",
                       "--resume", "latest"])
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("holds local critics of 2 layer groups") == 1, p.stderr
        assert "Traceback" not in p.stderr


@pytest.mark.parametrize("overrides,needle", [
    (["train.optimizer=lbfgs", "data.batch_size=0"], "train.optimizer: local_critic updates"),
    (["critic.kind=conv"], "critic.kind: a conv critic needs a conv network"),
    (["critic.pool=2"], "critic.pool: pooling needs a conv network"),
    (["critic.lr=0"], "critic.lr: must be > 0"),
    (["parallel.data_replicas=2"], "parallel.data_replicas: local_critic runs one replica"),
])
def test_bad_critic_config(overrides, needle):
    cfg = load_config(str(ROOT / "configs/peaks.yaml"), ["train.method=local_critic", *overrides])
    with pytest.raises(ConfigError, match=needle):
        validate(cfg, 4)
