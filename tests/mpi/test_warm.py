"""Warm starts keep the level-0 C-points only (issue 17): 1/cfactor of the memory, the
same training bit for bit, and checkpoints of either layout load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WORLD, sets
from mpi4py import MPI

from mgrit_nn.methods.layer_parallel import LayerParallelMethod
from mgrit_nn.mgrit import MGRIT
from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer

pytestmark = pytest.mark.mpi

BASE = dict(data__name="peaks", data__n_train=64, data__n_val=0, data__batch_size=16,
            model__width=4, model__layers=256, mgrit__cfactor=4, train__method="oneshot",
            train__steps=20, train__eval_every=0, train__lr=0.01)


def every_point(self):
    """Warm starts of every level-0 point (what was stored before)."""
    lev = self.levels[0]
    points = list(lev.points())
    return torch.arange(len(points), device=self.device), points


def train(**kw) -> tuple[list[float], int]:
    trainer = Trainer(setup(None, sets(**{**BASE, **kw}), WORLD))
    trainer.train(quiet=True)
    nbytes = WORLD.allreduce(trainer.method.report(trainer.data)["warm_store_bytes"], MPI.SUM)
    return [r["loss"] for r in trainer.history], nbytes


@pytest.mark.parametrize("relax", ["F", "FCF"])
def test_c_points_only_train_bitwise_as_every_point(relax, monkeypatch):
    kept, small = train(mgrit__relax=relax)
    monkeypatch.setattr(MGRIT, "warm_rows", every_point)
    full, big = train(mgrit__relax=relax)
    assert kept == full                       # bit for bit, 20 mini-batch steps
    assert big >= 3.9 * small, (big, small)   # 257 points -> 64 C-points per solver


def test_a_checkpoint_of_every_point_loads_its_c_points():
    """Checkpoints written before (every point, no ``<name>_points``) give the same
    stores as the new layout; a checkpoint lacking a needed point is refused (None)."""
    warm = {"forward": np.arange(9 * 2, dtype=np.float64).reshape(9, 2)}
    got = LayerParallelMethod._rows_of(warm, "forward", np.array([8, 4]))
    assert got.tolist() == [[16.0, 17.0], [8.0, 9.0]]
    new = {"forward": warm["forward"][[4, 8]], "forward_points": np.array([4, 8])}
    assert LayerParallelMethod._rows_of(new, "forward", np.array([8, 4])).tolist() == \
        got.tolist()
    assert LayerParallelMethod._rows_of(new, "forward", np.array([6])) is None


def test_warm_dtype_stores_rounded_warm_starts_and_still_trains():
    """``train.warm_dtype: float16``: a quarter of float64's bytes; the solves start from
    rounded iterates, so the losses differ a little but training goes on."""
    same, big = train(train__steps=20)
    half, small = train(train__steps=20, train__warm_dtype="float16")
    assert big == 4 * small
    assert half != same
    assert half[-1] < 0.9 * half[0] and abs(half[-1] - same[-1]) < 0.05 * same[-1]


def test_memory_mapped_warm_store_trains_bit_for_bit_and_leaves_no_file(tmp_path_factory):
    """``train.warm_store: mmap``: the stores are CPU tensors over a mapped file, deleted
    once mapped (nothing left in warm_store_dir), and the losses are the in-memory run's,
    bit for bit, in the run's dtype and in float16."""
    folder = WORLD.bcast(str(tmp_path_factory.mktemp("warm")) if WORLD.rank == 0 else None)
    for dtype in ("same", "float16"):
        mem, nbytes = train(train__steps=20, train__warm_dtype=dtype)
        trainer = Trainer(setup(None, sets(**{**BASE, "train__steps": 20,
                                              "train__warm_dtype": dtype,
                                              "train__warm_store": "mmap",
                                              "train__warm_store_dir": folder}), WORLD))
        trainer.train(quiet=True)
        store = trainer.method.fwd_store.store
        assert store.device.type == "cpu" and store.numel() > 0
        assert [r["loss"] for r in trainer.history] == mem
        got = WORLD.allreduce(trainer.method.report(trainer.data)["warm_store_bytes"], MPI.SUM)
        assert got == nbytes
        WORLD.Barrier()
        assert not list(Path(folder).iterdir())
