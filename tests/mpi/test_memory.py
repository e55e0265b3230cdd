"""Memory of one MGRIT gradient (issue 16): the tensor bytes a rank holds at its peak, measured
as they are dispatched (``livemem``), in the rank's level-0 state sets, and against the
pre-flight estimate (``memory.py``) that ``train`` and ``check`` refuse runs by."""

from __future__ import annotations

import pytest
from conftest import WORLD, sets
from mpi4py import MPI

from mgrit_nn.commands.bench import bench_batch
from mgrit_nn.livemem import peak_live_bytes
from mgrit_nn.memory import estimate_memory
from mgrit_nn.methods.base import Batch
from mgrit_nn.methods.layer_parallel import LayerParallelMethod
from mgrit_nn.setup_run import setup

pytestmark = pytest.mark.mpi

# batch 400, width 8: the states, not the weight tables, make the memory, as in training
BASE = dict(data__name="peaks", data__n_train=400, data__n_val=0, model__width=8,
            model__layers=128, runtime__dtype="float64", train__method="oneshot")


def first_gradient(exact: bool, **kw) -> tuple[float, float, float]:
    """The largest rank's peak bytes of a method's first gradient (storage allocated in it),
    that peak in the rank's level-0 state sets, and the pre-flight estimate of the states
    and warm-start stores."""
    run = setup(None, sets(**{**BASE, **kw}), WORLD)
    x, y, idx = bench_batch(run)
    method = LayerParallelMethod(run, exact=exact)
    peak = peak_live_bytes(lambda: method.step(Batch(x, y, idx)))
    level0 = method.net.solver.data[0].u.nbytes
    est = estimate_memory(run.cfg, WORLD.Get_size())
    return (WORLD.allreduce(peak, MPI.MAX), WORLD.allreduce(peak / level0, MPI.MAX),
            est["states"] + (0 if exact else est["warm start"]))


@pytest.mark.parametrize("relax,step", [("F", "euler"), ("FCF", "euler"), ("FCF", "verlet")])
def test_one_shot_and_exact_gradients_hold_at_most_6_state_sets(relax, step):
    # the floor is 3 (u and lambda at every point, and the linearization D)
    for exact in (False, True):
        peak, state_sets, _ = first_gradient(exact, mgrit__relax=relax, model__step=step)
        assert 3 < state_sets <= 6, (exact, state_sets)


@pytest.mark.parametrize("kw", [dict(), dict(mgrit__cfactor=2), dict(model__step="verlet")],
                         ids=["euler", "cfactor2", "verlet"])
def test_the_preflight_estimate_is_within_15_percent_of_the_measured_peak(kw):
    peak, _, estimate = first_gradient(False, **kw)
    assert 0.85 <= estimate / peak <= 1.15, (estimate, peak)

