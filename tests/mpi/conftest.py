"""Helpers for tests that run under ``mpiexec -n P python -m pytest --with-mpi tests/mpi``.

Every assertion is made on values all ranks share (broadcast first), so a
failure fails on every rank at once and never leaves ranks waiting.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import pytest
import torch
from mpi4py import MPI

from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.runtime import node_ranks
from mgrit_nn.setup_run import setup

WORLD = MPI.COMM_WORLD
node_ranks()            # collective on first call: every rank, before any sub-communicator


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """No "MPI Information" block (20 lines per rank) at the end of every run: pytest-mpi
    prints it when its plugin object's flag is set in its own pytest_configure, before this."""
    import pytest_mpi

    for plugin in config.pluginmanager.get_plugins():
        if isinstance(plugin, pytest_mpi.MPIPlugin):
            plugin._is_testing_mpi = False


def sets(**kw) -> list[str]:
    """``sets(model__layers=63)`` -> ``["runtime.dtype=float64", "model.layers=63"]``: the MPI
    tests compare against serial autograd and across rank counts to round-off, so they run
    in float64 (not the training default, float32) unless a test sets ``runtime__dtype``."""
    return ["runtime.dtype=float64"] + [f"{k.replace('__', '.')}={v}" for k, v in kw.items()]


SMALL = dict(data__n_train=24, data__n_val=0, model__width=4)


def forward(comm: MPI.Comm, **kw):
    """MGRIT forward on ``comm``; returns (result, u_N on every rank, run, net)."""
    run = setup(None, sets(**{**SMALL, **kw}), comm)
    net = run.network()
    x = run.data.x_train.to(run.dtype)
    res = net.solve_forward(x)
    uN = torch.empty((x.shape[0],) + run.shapes.state, dtype=run.dtype)
    if net.last:
        uN.copy_(net.final_state())
    run.msg.bcast_tensor(uN, root=net.chain.ranks[-1])
    return res, uN, run, net


def serial_uN(run) -> torch.Tensor:
    ref = SerialResNet(run.cfg.model, run.shapes, run.dtype)
    with torch.no_grad():
        return ref.states(run.data.x_train.to(run.dtype))[-1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def gradients(comm: MPI.Comm, fwd_iters=None, adj_iters=None, **kw):
    """Forward + adjoint MGRIT on ``comm``; errors against serial autograd, on every rank.

    Returns (grad_rel_err, grad_max_rel_err, forward result, adjoint result, run, net).
    """
    from mgrit_nn.commands.check import gradient_errors

    run = setup(None, sets(**{**SMALL, **kw}), comm)
    net = run.network()
    x, y = run.data.x_train.to(run.dtype), run.data.y_train
    fwd = net.solve_forward(x, max_iter=fwd_iters)
    adj_kw = {} if adj_iters is None else {"max_iter": adj_iters}
    err, worst = gradient_errors(run, net, net.backprop(x, y, **adj_kw), x, y)
    return err, worst, fwd, net.adj_result, run, net


@pytest.fixture
def shared_tmp(tmp_path_factory) -> Path:
    """A fresh folder every rank sees (rank 0 makes it): a run folder of all ranks."""
    return Path(WORLD.bcast(str(tmp_path_factory.mktemp("run")) if WORLD.rank == 0 else None))


@pytest.fixture
def command(capfd):
    """``command("train", "configs/peaks.yaml", ...)`` runs ``mgrit-nn ARGS`` in this process
    on every rank, as ``mpiexec -n P python -m mgrit_nn ARGS`` would after its start-up
    (which the serial tests pay for in a new process per command: ~3 s of CPU per rank).
    Returns (exit status, this rank's stdout, this rank's stderr with the log lines)."""
    from mgrit_nn.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
        handler = logging.StreamHandler(sys.stderr)      # the CLI's log lines, as on stderr
        logging.getLogger().addHandler(handler)
        capfd.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
        finally:
            logging.getLogger().removeHandler(handler)
            for s, h in saved.items():                 # the run's stop handlers go
                signal.signal(s, h)
        out, err = capfd.readouterr()
        return code, out, err
    return run


@pytest.fixture
def mgrit_nn(command):
    """``mgrit_nn(*args)`` -> (exit status, rank 0's last stdout line as JSON or None, the stderr of
    all ranks, rank 0's first), the same on every rank; asserts every rank exited with the
    same status."""
    def run(*args: str):
        code, out, err = command(*args)
        codes = WORLD.allgather(code)
        assert codes == [codes[0]] * WORLD.size, codes
        out, err = WORLD.bcast(out), "".join(WORLD.allgather(err))
        lines = out.strip().splitlines()
        return code, json.loads(lines[-1]) if lines else None, err
    return run


def ranks(*sizes: int):
    return pytest.mark.skipif(WORLD.size not in sizes,
                              reason=f"on {' or '.join(map(str, sizes))} ranks")


@pytest.fixture
def train_command(command):
    """``train_command(config, small)(out, *args, steps=S)``: ``mgrit-nn train config --out
    out --set train.steps=S *small *args`` on every rank; asserts exit status 0 and returns
    rank 0's stderr, on every rank."""
    def make(config: str, small: list[str]):
        def run(out, *args: str, steps: int) -> str:
            code, _, err = command("train", config, "--out", out, "--set",
                                   f"train.steps={steps}", *small, *args)
            assert WORLD.allgather(code) == [0] * WORLD.size, err  # ... after rank 0 closed
            return WORLD.bcast(err)                                # history.h5
        return run
    return make


def on_rank_0(change) -> None:
    """``change()`` (files changed, a command asked) on rank 0 alone, between barriers: no
    rank reads before or after; what it raises fails the test on every rank."""
    WORLD.Barrier()
    error = None
    if WORLD.rank == 0:
        try:
            change()
        except BaseException as exc:   # noqa: BLE001 - shared, then raised on every rank
            error = f"on rank 0: {type(exc).__name__}: {exc}"
    error = WORLD.bcast(error)
    assert error is None, error


def datasets(path) -> dict:
    """Every dataset of an HDF5 file as a plain serial h5py reader sees it: {name: array}."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, v: out.update({k: v[()]}) if isinstance(v, h5py.Dataset)
                     else None)
    return out


def refused(command, *argv: str) -> str:
    """The command exits 2 on every rank; returns the message rank 0 alone printed."""
    code, _, err = command(*argv)
    codes, errs = WORLD.allgather(code), WORLD.allgather(err)
    assert codes == [2] * WORLD.size, (codes, errs)
    assert not any(e.strip() for e in errs[1:]), errs           # said once, by rank 0
    assert "Traceback" not in errs[0]
    return errs[0]
