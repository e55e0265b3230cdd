"""The performance model (``mgrit_nn.perfmodel``, ``mgrit-nn model``): virtual ranks record
the schedule an MPI run has, rank by rank and event by event; the command calibrates,
checks itself against measured times and predicts; its errors are said once. The replay's
arithmetic on hand-made schedules: tests/test_replay.py."""

from __future__ import annotations

import json

import pytest
from conftest import WORLD, ranks, refused

from mgrit_nn.commands.model import gradient_of
from mgrit_nn.perfmodel.trace import Trace
from mgrit_nn.perfmodel.virtual import record
from mgrit_nn.setup_run import setup

pytestmark = pytest.mark.mpi

NET = ["model.layers=24", "data.n_train=20", "data.batch_size=10", "runtime.threads=1"]


def _without_seconds(events: list[tuple]) -> list[tuple]:
    return [e[:3] if e[0] == "c" else e for e in events]


@ranks(1, 2, 3, 4)
@pytest.mark.parametrize("exact,step", [(False, "euler"), (True, "euler"), (False, "verlet")])
def test_virtual_ranks_record_the_schedule_of_mpi_ranks(exact, step):
    """Every event of every rank (messages, peers, tags, bytes, reductions, and the kernels
    and elements of the compute between them) as the MPI run has them, on P virtual ranks."""
    run = setup("configs/peaks.yaml", NET + [f"model.step={step}"], WORLD)
    g = gradient_of(exact)(run)
    g()
    with Trace(count=True) as tr:
        run.msg.trace = tr
        g()
        run.msg.trace = None
    mine = _without_seconds(tr.events)
    if WORLD.rank == 0:
        virtual = record(run, WORLD.size, gradient_of(exact))
    theirs = WORLD.bcast([_without_seconds(v) for v in virtual] if WORLD.rank == 0 else None)
    assert theirs[WORLD.rank] == mine
    assert any(e[0] == "c" and e[1] > 0 for e in mine)
    if WORLD.size > 1:
        assert any(e[0] == "s" for e in mine) and any(e[0] == "r" for e in mine)


@ranks(2)
def test_model_calibrates_checks_itself_and_predicts(command):
    code, out, err = command("model", "configs/peaks.yaml", "--ranks", "1,2,4,8",
                             *[a for s in NET for a in ("--set", s)],
                             "--set", "bench.repeats=2", "--set", "bench.warmup=1")
    assert WORLD.allgather(code) == [0, 0], err
    if WORLD.rank != 0:
        assert not out.strip()
        return
    r = json.loads(out.strip().splitlines()[-1])
    m = r["machine"]
    assert m["kernel_s"] >= 0 and m["element_s"] >= 0 and m["kernel_s"] + m["element_s"] > 0
    assert m["latency_s"] > 0 and m["bandwidth_Bps"] > 0
    assert [p["ranks"] for p in r["predicted"]] == [1, 2, 4, 8]
    for p in r["predicted"]:
        assert 0 < p["oneshot_busy_s"] <= p["oneshot_s"] * (1 + 1e-12)
        assert p["oneshot_speedup"] == pytest.approx(r["serial_predicted_s"] / p["oneshot_s"])
    one = r["predicted"][0]
    assert one["oneshot_busy_s"] == pytest.approx(one["oneshot_s"])     # one rank never waits
    for v in r["validation"].values():
        assert v["measured_s"] > 0 and v["error"] == pytest.approx(
            v["predicted_s"] / v["measured_s"] - 1)
    from test_commands import help_text

    text = help_text("model")
    keys = [*r, *r["predicted"][0], *r["validation"]["serial"]]
    assert not [k for k in keys if k not in text and k not in ("machine_loaded",)]


@ranks(1)
def test_model_with_a_machine_file_predicts_on_one_rank(command, tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("kernel_s: 1.0e-5\nelement_s: 1.0e-9\nlatency_s: 2.0e-6\nbandwidth_Bps: 1e10\n")
    code, out, err = command("model", "configs/peaks.yaml", "--machine", str(f), "--ranks",
                             "1,3", "--exact", *[a for s in NET for a in ("--set", s)])
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["machine"]["bandwidth_Bps"] == 1e10 and "validation" not in r
    assert [p["ranks"] for p in r["predicted"]] == [1, 3]
    assert all(p["mgrit_s"] > 0 and p["mgrit_kernels"] > 0 for p in r["predicted"])
    # one rank: the replay prices the counted work, nothing else
    assert r["predicted"][0]["oneshot_s"] == pytest.approx(r["predicted"][0]["oneshot_busy_s"])


@ranks(1, 2)
def test_model_errors_are_said_once(command, shared_tmp):
    bad, good = shared_tmp / "bad.yaml", shared_tmp / "good.yaml"
    if WORLD.rank == 0:
        bad.write_text("kernel_s: 1.0e-5\nlatency_s: fast\n")
        good.write_text("kernel_s: 1.0e-5\nelement_s: 0\nlatency_s: 0\nbandwidth_Bps: 1e9\n")
    WORLD.Barrier()
    said = refused(command, "model", "configs/peaks.yaml", "--machine", str(bad))
    assert "--machine" in said and "element_s" in said and "latency_s" in said
    said = refused(command, "model", "configs/peaks.yaml", "--machine", str(bad) + ".none")
    assert "--machine" in said
    said = refused(command, "model", "configs/peaks.yaml", "--set", "model.layers=8",
                   "--machine", str(good), "--ranks", "1,16")
    assert "--ranks 1,16" in said and "(8)" in said
    said = refused(command, "model", "configs/peaks.yaml", "--set", "runtime.graphs=emulate",
                   "--set", f"parallel.data_replicas={WORLD.size}", "--machine", str(good))
    assert "runtime.graphs must be eager" in said
    if WORLD.size == 1:
        said = refused(command, "model", "configs/peaks.yaml")
        assert "2 ranks" in said and "--machine" in said
