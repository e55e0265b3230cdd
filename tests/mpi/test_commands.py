"""What a person sees of the commands, run in this MPI part's processes: ``mgrit-nn check``'s
verdict against stated tolerances (exit status 1 on a failure), config errors and divergence
said once (design §10), the JSON of train and bench and its keys in their --help. The rest
of the CLI, and what needs processes of its own: tests/test_cli.py, tests/test_failures.py."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import WORLD, ranks, refused

pytestmark = pytest.mark.mpi

SMALL = ["--set", "data.n_train=64", "--set", "data.n_val=0", "--set", "model.layers=16"]


def help_text(command: str) -> str:
    from mgrit_nn.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    return sub.choices[command].format_help()


@ranks(2)
def test_check_passes_with_a_verdict_a_person_reads(mgrit_nn):
    code, out, err = mgrit_nn("check", "configs/peaks.yaml", *SMALL)
    assert code == 0, err
    for key in ("fwd_iters", "fwd_residuals", "state_rel_err", "adj_iters", "adj_residuals",
                "grad_rel_err", "grad_max_rel_err", "loss_serial", "loss_mgrit"):
        assert key in out
    assert out["passed"] and out["fwd_converged"] and out["adj_converged"]
    assert out["state_ok"] and out["grad_ok"]
    assert out["fwd_tol"] == out["adj_tol"] == 1e-10 and out["err_tol"] == pytest.approx(1.49e-8,
                                                                                      rel=1e-2)
    lines = err.splitlines()
    fwd = next(ln for ln in lines if ln.strip().startswith("forward:"))
    assert f"{out['fwd_iters']} iterations" in fwd and "<= 1e-10 OK" in fwd
    assert "state error" in fwd and fwd.endswith("<= 1.5e-08 OK")
    assert any(ln.strip().startswith("adjoint:") and ln.endswith("<= 1e-10 OK") for ln in lines)
    assert any(ln.strip().startswith("gradient:") and ln.endswith("OK") for ln in lines)
    assert "mgrit-nn check: PASS" in lines
    assert not [k for k in out if k not in help_text("check")]      # --help names every key


@ranks(2)
@pytest.mark.parametrize("cap,failed", [("mgrit.max_iter=1", "forward, state, adjoint, gradient"),
                                        ("adjoint.max_iter=1", "adjoint, gradient")])
def test_check_fails_when_a_solve_stops_short(mgrit_nn, cap, failed):
    code, out, err = mgrit_nn("check", "configs/peaks.yaml", *SMALL, "--set", cap)
    assert code == 1, err                       # on every rank: each exits with 1 itself
    assert out["passed"] is False and out["grad_ok"] is False and out["adj_converged"] is False
    assert out["fwd_converged"] is (cap.startswith("adjoint"))
    assert f"mgrit-nn check: FAIL ({failed})" in err
    assert "(stopped at max_iter 1)" in err and "Traceback" not in err


@ranks(2)
@pytest.mark.parametrize("step", ["euler", "verlet"])
def test_check_in_float32_uses_a_tolerance_float32_reaches(mgrit_nn, step):
    """tol 1e-10 is below float32's rounding: the check raises it to 10 eps |u_C|, says so, and
    stops there instead of running all max_iter iterations."""
    code, out, err = mgrit_nn("check", "configs/peaks.yaml", *SMALL, "--set",
                              "runtime.dtype=float32", "--set", f"model.step={step}")
    assert code == 0, err
    assert out["passed"] and out["fwd_iters"] < 30 and out["adj_iters"] < 30
    assert out["fwd_tol"] > 1e-10 and out["adj_tol"] > 1e-10
    assert out["fwd_residuals"][-1] <= out["fwd_tol"] < out["fwd_residuals"][0]
    assert out["err_tol"] == pytest.approx(3.45e-4, rel=1e-2)           # sqrt(eps)
    assert err.count("raised to the float32 rounding floor") == 2


@ranks(2)
def test_check_keeps_the_float64_tolerance_unless_it_is_below_round_off(mgrit_nn):
    code, out, err = mgrit_nn("check", "configs/peaks.yaml", *SMALL, "--set", "mgrit.tol=1e-300")
    assert code == 0, err
    assert 1e-300 < out["fwd_tol"] < 1e-11 and out["passed"]
    assert out["dtype"] == "float64"       # the config trains in float32; check runs float64
    assert "tol 1e-300 raised to the float64 rounding floor" in err


@ranks(2)
def test_train_and_bench_help_name_every_key_of_their_json(mgrit_nn, shared_tmp):
    code, out, err = mgrit_nn("train", "configs/peaks.yaml", *SMALL, "--set", "train.steps=2",
                              "--quiet", "--out", shared_tmp / "run")
    assert code == 0, err                                   # the keys of a one-shot run
    assert not [k for k in out if k not in help_text("train")]
    code, out, err = mgrit_nn("bench", "configs/peaks.yaml", *SMALL, "--set", "bench.repeats=1",
                              "--set", "bench.warmup=0")
    assert code == 0, err
    assert "mgrit_grad_s" in out                                # bench.exact: all the keys
    text = help_text("bench")
    assert not [k for k in [*out, *out["machine"], *out["per_rank"][0]] if k not in text]


@ranks(1, 3)
@pytest.mark.parametrize("override,needle", [
    ("mgrit.cfactor=1", "mgrit.cfactor: must be >= 2"),
    ("model.depth=4", "unknown config key 'model.depth'"),
    ("model.layers=1", "model.layers:"),
])
def test_bad_config_one_message_every_rank_fails(command, override, needle):
    if WORLD.size == 1 and override == "model.layers=1":
        pytest.skip("one layer is fine on one rank")
    said = refused(command, "check", "configs/peaks.yaml", "--set", override)
    assert said.count(needle) == 1, said


@ranks(2)
def test_empty_out_is_one_message(command):
    said = refused(command, "train", "configs/peaks.yaml", "--out", "", "--quiet")
    assert said.count("--out: the output folder is an empty path") == 1, said


@ranks(2)
def test_divergence_is_said_once(mgrit_nn, shared_tmp):
    code, _, err = mgrit_nn("train", "configs/peaks.yaml", "--out", shared_tmp, "--set",
                            "train.lr=1e6", "--set", "train.optimizer=sgd", "--set",
                            "train.steps=12", "--set", "data.n_train=64", "--set",
                            "data.n_val=0", "--quiet")
    assert code == 0, err
    assert err.count("training diverges: the loss grew") == 1, err


@ranks(2)
def test_a_nan_residual_is_one_message(mgrit_nn):
    """A NaN residual is seen by all ranks at once: rank 0 names iteration and level."""
    code, _, err = mgrit_nn("check", "configs/peaks.yaml", "--set", "model.T=1e300",
                            "--set", "data.n_train=8")
    assert code == 1, err
    assert err.count("MGRIT forward: residual is") == 1, err
    assert "iteration 1" in err and "level 0" in err
    assert "Traceback" not in err


@ranks(2)
def test_train_cli_last_line_is_json(mgrit_nn, shared_tmp):
    out = shared_tmp / "run"
    code, result, err = mgrit_nn("train", "configs/peaks.yaml", "--quiet", "--out", out,
                                 "--set", "train.steps=3", "--set", "data.n_train=32", "--set",
                                 "data.n_val=16", "--set", "model.layers=16")
    assert code == 0, err
    for key in ("method", "ranks", "steps", "loss", "train_accuracy", "val_accuracy",
                "wall_time_s", "out"):
        assert key in result
    assert result["ranks"] == 2 and result["steps"] == 3 and result["out"] == str(out)
    assert json.loads((out / "result.json").read_text())["loss"] == result["loss"]
    assert "it/s" not in err                      # --quiet: no progress bar


@ranks(2)
def test_bench_reports_times_ratios_and_work(mgrit_nn):
    # batch 400: the states, not the weight tables, make the memory (as in training)
    code, r, err = mgrit_nn("bench", "configs/peaks.yaml", "--set", "model.layers=32",
                            "--set", "data.n_train=400", "--set", "bench.repeats=2", "--set",
                            "bench.warmup=1", "--set", "mgrit.relax=F")
    assert code == 0, err
    for key in ("serial_grad_s", "oneshot_grad_s", "mgrit_grad_s", "ratio_oneshot",
                "ratio_mgrit", "span_speedup_oneshot", "per_rank", "machine"):
        assert key in r
    # without bench.compile_serial the best serial baseline is eager autograd, with torch's
    # tanh or (on the CPU, as the layer-parallel steps compute it) 2 sigmoid(2z) - 1
    assert "serial_compiled_grad_s" not in r and r["serial_sigmoid_grad_s"] > 0
    assert r["serial_best_grad_s"] == min(r["serial_grad_s"], r["serial_sigmoid_grad_s"])
    assert r["ratio_oneshot"] == pytest.approx(r["oneshot_grad_s"] / r["serial_best_grad_s"])
    # 2 forward + 2 adjoint F-relaxation iterations: a few sweeps each, counted by the solver
    assert 2 < r["oneshot_fwd_sweeps"] < 10 and 2 < r["oneshot_adj_sweeps"] < 10
    assert r["mgrit_fwd_iters"] >= 2 and len(r["per_rank"]) == 2
    assert all(pr["rss_mb"] > 0 for pr in r["per_rank"])
    # kernels per gradient: serial autograd a few per layer and sweep; MGRIT's busiest rank
    # at most all ranks' together
    assert r["serial_kernels"] > 2 * 32 * 4
    assert 0 < r["oneshot_kernels"] <= r["oneshot_kernels_total"] and r["mgrit_kernels"] > 0
    # memory: the level-0 iterates of the forward and the adjoint solve and the adjoint's
    # linearization (3 state sets) are the floor; the rest is at most 3 more (issue 16)
    for m in ("oneshot", "mgrit"):
        assert 3 < r[f"{m}_state_sets"] <= 6 and r[f"{m}_peak_mb"] > 0
    # the ping-pong of ranks 0 and 1: one size is the run's state message (the training
    # default, float32)
    link = r["pingpong"]
    assert r["dtype"] == "float32" and r["batch"] * r["width"] * 4 in link["bytes"]
    assert len(link["one_way_s"]) == len(link["bytes"])
    assert 0 < link["latency_s"] <= max(link["one_way_s"]) and link["bandwidth_Bps"] > 0


@ranks(1)
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("g++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_bench_times_a_compiled_serial_baseline(mgrit_nn):
    code, r, err = mgrit_nn("bench", "configs/peaks.yaml", "--set", "model.layers=4",
                            "--set", "data.n_train=16", "--set", "bench.repeats=2", "--set",
                            "bench.warmup=1", "--set", "bench.exact=false",
                            "--set", "bench.compile_serial=true", "--set", "runtime.dtype=float64")
    assert code == 0, err
    assert r["serial_compile_s"] > 0 and r["serial_compiled_grad_s"] > 0
    assert r["serial_compiled_grad_diff"] < 1e-12         # the same gradient, float64
    assert r["serial_best_grad_s"] == min(r["serial_grad_s"], r["serial_compiled_grad_s"],
                                          r["serial_sigmoid_grad_s"])
    assert r["ratio_oneshot"] == pytest.approx(r["oneshot_grad_s"] / r["serial_best_grad_s"])
    assert r["pingpong"] is None                          # one rank: no neighbour


@ranks(1)
def test_bench_replays_recorded_iterations_and_a_recorded_serial_gradient(mgrit_nn):
    """runtime.graphs (here its CPU emulation): every timed one-shot iteration is a replay,
    the recorded serial gradient is serial autograd's, bit for bit (float64)."""
    code, r, err = mgrit_nn("bench", "configs/peaks.yaml", "--set", "model.layers=16",
                            "--set", "data.n_train=16", "--set", "bench.repeats=2", "--set",
                            "bench.warmup=0", "--set", "bench.exact=false",
                            "--set", "runtime.graphs=emulate", "--set", "runtime.dtype=float64")
    assert code == 0, err
    assert r["oneshot_iterations"] == 4 and r["oneshot_replays"] == 4.0
    assert r["serial_graphed_grad_diff"] == 0.0 and r["serial_graphed_grad_s"] > 0
    assert r["serial_best_grad_s"] == min(r["serial_grad_s"], r["serial_graphed_grad_s"],
                                          r["serial_sigmoid_grad_s"])
    text = help_text("bench")
    assert not [k for k in r if k not in text]


@ranks(2, 3)
def test_bench_times_the_pipeline_baseline_with_the_serial_gradient(mgrit_nn):
    """GPipe and 1F1B over the same ranks (torch.distributed from the MPI ranks, gloo): every
    micro-batch count dividing the batch up to bench.max_microbatches, the same gradient as
    serial autograd, the best of each schedule reported."""
    code, r, err = mgrit_nn("bench", "configs/peaks.yaml", "--set", "model.layers=12",
                            "--set", "data.n_train=12", "--set", "bench.repeats=1", "--set",
                            "bench.warmup=0", "--set", "bench.exact=false", "--set",
                            "bench.pipeline=true", "--set", "bench.max_microbatches=4",
                            "--set", "runtime.dtype=float64")
    assert code == 0, err
    assert r["pipeline_bounds"] == {2: [0, 6, 12], 3: [0, 4, 8, 12]}[WORLD.size]
    assert [(q["schedule"], q["microbatches"]) for q in r["pipeline"]] == [
        (s, m) for m in (1, 2, 4) for s in ("gpipe", "1f1b")
        if s == "gpipe" or m >= WORLD.size]                # 1F1B: a micro-batch per stage
    assert r["pipeline_grad_diff"] < 1e-12                    # float64: the same gradient
    for s in ("gpipe", "1f1b"):
        best = min((q for q in r["pipeline"] if q["schedule"] == s), key=lambda q: q["seconds"])
        assert r[f"pipeline_{s}_s"] == best["seconds"] > 0
        assert r[f"pipeline_{s}_microbatches"] == best["microbatches"]
    text = help_text("bench")
    assert not [k for k in r if k.startswith("pipeline") and k not in text]


@ranks(1, 2)
def test_bench_pairs_times_the_compared_gradients_alternately(mgrit_nn):
    """bench.pairs: serial, one-shot on the group and (2 or more ranks) one-shot of the whole
    network on rank 0 alone, round by round; the one-rank gradient is the group's."""
    code, r, err = mgrit_nn("bench", "configs/peaks.yaml", "--set", "model.layers=16",
                            "--set", "data.n_train=32", "--set", "bench.repeats=1", "--set",
                            "bench.warmup=0", "--set", "bench.exact=false", "--set",
                            "bench.pairs=3", "--set", "runtime.dtype=float64")
    assert code == 0, err
    p = r["paired"]
    assert p["rounds"] == 3 and p["serial_s"] > 0 and p["oneshot_s"] > 0
    q1, median, q3 = p["ratio_oneshot"]
    assert 0 < q1 <= median <= q3
    if WORLD.size == 1:
        assert p["efficiency"] is None and p["oneshot_one_rank_s"] is None
        assert p["one_rank_grad_diff"] is None
    else:
        assert p["one_rank_grad_diff"] < 1e-12          # float64: the same network and gradient
        q1, median, q3 = p["efficiency"]
        assert 0 < q1 <= median <= q3 and p["oneshot_one_rank_s"] > 0
    text = help_text("bench")
    assert not [k for k in p if k not in text]
