"""On a CUDA device (skipped elsewhere; run by ``benchmarks/gpu_session.sh`` on a GPU
machine): the network on the GPU trains as on the CPU, and with ``runtime.graphs: cuda``
(CUDA graphs of the MGRIT iterations) as eagerly on the GPU. Each rank is a replica
holding all layers (CUDA graphs need the layers on one rank); ranks share the GPUs."""

from __future__ import annotations

import pytest
import torch
from conftest import WORLD, ranks, sets

from mgrit_nn.setup_run import setup
from mgrit_nn.train.loop import Trainer

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

P = WORLD.Get_size()
BASE = dict(data__name="peaks", data__n_train=16 * P, data__n_val=0, data__batch_size=8 * P,
            model__width=8, model__layers=64, mgrit__cfactor=4, train__method="oneshot",
            train__steps=8, train__eval_every=0, train__lr=0.01, parallel__data_replicas=P)


def train(**kw):
    trainer = Trainer(setup(None, sets(**{**BASE, **kw}), WORLD))
    trainer.train(quiet=True)
    net = trainer.method.net
    return ([r["loss"] for r in trainer.history], net.solver.stats.replays,
            net.solver.graphs, net.device.type)


@pytest.mark.parametrize("method", ["oneshot", "mgrit"])
def test_gpu_training_agrees_with_the_cpu(method):
    cpu, _, _, where = train(train__method=method, runtime__device="cpu")
    gpu, _, _, there = train(train__method=method, runtime__device="cuda")
    assert (where, there) == ("cpu", "cuda")
    assert gpu == pytest.approx(cpu, rel=1e-10)           # float64: kernels differ, not maths


@pytest.mark.parametrize("method", ["oneshot", "mgrit"])
def test_cuda_graphs_train_as_eager_on_the_gpu(method):
    eager, _, _, _ = train(train__method=method, runtime__device="cuda")
    graphed, replays, kept, _ = train(train__method=method, runtime__device="cuda",
                                      runtime__graphs="cuda")
    assert kept == "cuda" and replays >= 8, (kept, replays)    # no recording failed
    assert graphed == pytest.approx(eager, rel=1e-12)


@ranks(1)
def test_bench_times_cuda_graphs_on_one_gpu(mgrit_nn):
    code, r, err = mgrit_nn("bench", "configs/peaks.yaml", "--set", "model.layers=64",
                            "--set", "data.n_train=32", "--set", "bench.repeats=3",
                            "--set", "bench.exact=false", "--set", "runtime.device=cuda",
                            "--set", "runtime.graphs=cuda", "--set", "runtime.dtype=float64")
    assert code == 0, err
    assert r["device"].startswith("cuda")
    assert r["oneshot_replays"] == r["oneshot_iterations"] == 4
    assert r["serial_graphed_grad_diff"] < 1e-12 and r["serial_graphed_grad_s"] > 0
