"""local_critic through the command line (issue 9): one clear error on another rank count or
a bad critic config. Exact resume and the sub-model table: tests/mpi/test_local_critic.py."""

from __future__ import annotations

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


def test_resume_on_another_rank_count_is_one_clear_error(tmp_path):
    """Critics belong to layer groups; resume bitwise on the same ranks:
    tests/mpi/test_local_critic.py."""
    train(2, tmp_path / "run", steps=5)
    p = mpirun(3, ["-m", "mgrit_nn", "train", "configs/peaks.yaml", "--out",
                   str(tmp_path / "run"), *SMALL, "--set", "train.steps=12",
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
