"""The papers' tables, one subcommand each (issue 15). Not under mpiexec: every run is its own
``mpiexec -n K mgrit-nn train`` (K = 1 really is one process), one at a time.

    python benchmarks/paper_tables.py sun [--ks 1,2,3,4] [--methods penalty,al] \\
        [--set k=v ...] [--out sun.json]
    python benchmarks/paper_tables.py sun-seeds [--ks 1,2,4] [--seeds 0,1,2,3,4] \\
        [--variants ours] [--set ...]
    python benchmarks/paper_tables.py sun-start [--every 1,2,3,6,15,30] [--seeds 0,3]
    python benchmarks/paper_tables.py sun-ablation [--k 4] [--methods penalty,al] \\
        [--variants ours,shallow,...] [--set k=v ...] [--out ablation.json]

``sun``: Sun et al.'s Table 1 on the level sets (configs/levelset_{penalty,al}.yaml):
per method and K, the train loss through the full serial forward pass, test accuracy,
measured wall time and speed-up over K = 1, the critical-path estimate (sum over steps of
the slowest stage's CPU time of local work, waits excluded, plus the shallow network's
training: the time with one core per stage, messages not counted) and its speed-up, and
the constraint violation at the end of every beta phase. With K above the cores the
measured time is oversubscribed: read the critical-path columns.

``sun-seeds``: the same runs for several ``model.seed`` values (``--seeds 0,1,2,3,4``): test
accuracy per seed, mean and spread per K, and the mean per-seed difference to K = 1.

``sun-start``: whether the shallow initialization transfers, per shallow block length S
(``--every 1,2,3,6,15,30``) and seed, at K = 1: the shallow network's step, its loss and
the replicated deep network's loss before the first step.

``sun-ablation``: at one K, each departure of ours from the paper's literal text undone
alone (``penalty.literal``), the shallow initialization on/off, the paper's own settings
(T = 1, the al beta schedule, noise into lambda_{K-1}): test accuracy and final violation.
Every variant is one change from ``ours`` (random init, our lambda step: ``OURS`` below),
not from the config, so the table means the same whatever the config ships.

    python benchmarks/paper_tables.py parpas [--ranks 2,4] [--configs swissroll,ellipses] \\
        [--seeds 0] [--set k=v ...] [--out parpas.json]
    python benchmarks/paper_tables.py lct [--ranks 2,4] [--seeds 0,1,2] [--set k=v ...]

``parpas``: Parpas & Muir on configs/{swissroll,ellipses}_parpas.yaml, per rank count with
global prediction and single-level (``parpas.coarse_iters=0``), against serial training of
the same network: accuracy, and the interface regression error as the mean of the last
20 steps, absolute (``regression_mse``, the paper's Figure 3), relative to the mean
square co-state (``regression_rel_mse``) and that mean square co-state itself (their
quotient), so that a lower error that only reflects smaller co-states shows as such.

``lct``: Lee et al.'s local critic training on configs/digits_local_critic.yaml, serial
(``train.method=serial``) and per rank count, for every seed (``model.seed``): the final
validation accuracy (mean and range over the seeds) and the sub-model table (f_1..f_i +
c_i: residual layers, parameters, validation accuracy as mean over the seeds).

Add a paper: one function ``table_NAME(args)`` and its entry in ``TABLES``. ``uptime`` is
printed before and after: the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["runtime.threads=1", "train.eval_every=0"]
SUN_QUIET = ["penalty.honest_every=0"]


def train(config: str, ranks: int, sets: list[str], out: Path,
          cols: tuple[str, ...] = ("violation", "beta", "shallow_s")) -> dict:
    """One training run; its result.json plus the history columns the tables need. A run
    that fails (a variant that diverges) is a row too: ``failed`` holds what mgrit-nn said,
    the columns its history has up to there."""
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "mgrit_nn", "train", config,
           "--out", str(out), "--quiet", "--overwrite"]
    for s in QUIET + sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    sys.stderr.write(p.stderr)
    if p.returncode == 0:
        r = json.loads((out / "result.json").read_text())
    else:
        said = [ln for ln in p.stderr.splitlines() if ln.startswith("mgrit-nn: ")]
        r = {"failed": said[-1] if said else f"exit status {p.returncode}",
             **dict.fromkeys(("val_accuracy", "train_loss", "wall_time_s", "critical_path_s"),
                             float("nan"))}
    if not (out / "history.h5").is_file():
        r["violation"] = [float("nan")]
        return r
    with h5py.File(out / "history.h5") as f:
        steps = f["steps"]
        for col in cols + ("prediction_s",):
            if col in steps:
                r[col] = np.nan_to_num(np.asarray(steps[col][()], dtype=float)).tolist()
        for col in ("shallow_loss", "replicated_loss"):     # the start's, first row only
            if col in steps:
                r[col] = float(steps[col][0])
    r["shallow_s"] = float(sum(r.get("shallow_s", [0.0])))
    r["critical_path_s"] = r.get("critical_path_s", float("nan")) + r["shallow_s"]
    return r


def phase_ends(r: dict) -> list[tuple[float, float]]:
    """(beta, violation) at the last step of every beta phase."""
    b, v = r.get("beta", []), r.get("violation", [])
    return [(b[k], v[k]) for k in range(len(b)) if k + 1 == len(b) or b[k + 1] != b[k]]


def config_of(method: str) -> str:
    return f"configs/levelset_{method}.yaml"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def table_sun(args) -> list[dict]:
    rows = []
    for method in args.methods.split(","):
        for K in (int(k) for k in args.ks.split(",")):
            with tempfile.TemporaryDirectory() as d:
                r = train(args.config or config_of(method), K,
                          SUN_QUIET + variant_sets(args.variants) + args.set, Path(d))
            r["K"], r["method"] = K, method
            rows.append(r)
            print(f"  done {method} K={K}: acc {r['val_accuracy']:.3f}", file=sys.stderr)
    print(f"config {args.config or 'configs/levelset_METHOD.yaml'} {' '.join(args.set)}\n")
    print("| method | K | train loss (serial pass) | test acc | runtime measured [s] "
          "| speed-up measured | critical path, model [s] | speed-up, model "
          "| violation at the end of each beta phase |")
    print("|---|---|---|---|---|---|---|---|---|")
    base: dict[str, dict] = {}
    for r in rows:
        b = base.setdefault(r["method"], r)
        over = " (oversubscribed)" if r["K"] > (os.cpu_count() or 1) else ""
        ends = ", ".join(f"{v:.2e} (β={be:g})" for be, v in phase_ends(r)) if r["K"] > 1 \
            else "-"
        print(f"| {r['method']} | {r['K']} | {r['train_loss']:.4f} | {r['val_accuracy']:.3f} "
              f"| {r['wall_time_s']:.1f}{over} | {b['wall_time_s'] / r['wall_time_s']:.2f}x "
              f"| {r['critical_path_s']:.1f} | {b['critical_path_s'] / r['critical_path_s']:.2f}x"
              f" | {ends} |")
    return rows


# Every ablation variant is one change from OURS, our departures from the paper's text
# (random init, lambda by a forward pass, the per-sample lambda step of size 1), whatever
# the config ships: the shipped levelset configs take the paper's initialization and
# lambda step (variant "paper-init") since 2026-12-03, with 2-layer shallow blocks since
# 2026-12-04 (and levelset_penalty lambda from the shallow network: "shallow-lambda").
OURS = ["penalty.init=random", "penalty.shallow_every=0", "penalty.literal=[]",
        "penalty.lr_lambda=1.0", "penalty.lambda_init=forward"]
# the paper's lambda step, as the shipped levelset configs take it
PAPER_LAMBDA = ["penalty.literal=[scaling,explicit]", "penalty.lr_lambda=0.1"]
# the shipped shallow start (2-layer blocks, 50 steps)
PAPER_INIT = ["penalty.init=shallow", "penalty.shallow_every=2", "penalty.shallow_steps=50"]
# name -> (what it is, --set overrides; "{k}" is replaced by nothing: one K per table)
VARIANTS = {
    "ours": ("our departures: random init, per-sample lambda step, lr_lambda 1", []),
    "paper-init": ("shallow init (2-layer blocks, 50 steps), literal # scaling + explicit "
                   "lambda step, lr_lambda 0.1 (levelset_al; levelset_penalty also takes "
                   "lambda from the shallow network)", PAPER_INIT + PAPER_LAMBDA),
    "paper-init-s30": ("paper-init with 30-layer shallow blocks, 100 steps (shipped until "
                       "2026-12-04)",
                       ["penalty.init=shallow", "penalty.shallow_every=30",
                        "penalty.shallow_steps=100"] + PAPER_LAMBDA),
    "shallow": ("+ shallow init (penalty.init: shallow)", ["penalty.init=shallow"]),
    "shallow-lambda": ("+ shallow init, lambda from the shallow network",
                       ["penalty.init=shallow", "penalty.lambda_init=shallow"]),
    "lit-scaling": ("shallow + literal # = B n scaling of the lambda step",
                    ["penalty.init=shallow", "penalty.literal=[scaling]"]),
    "scaling-random": ("literal # = B n scaling alone, random init",
                       ["penalty.literal=[scaling]"]),
    "scaling-noise": ("shallow + literal scaling + noise 0.1 into lambda_{K-1}",
                      ["penalty.init=shallow", "penalty.literal=[scaling]", "penalty.noise=0.1"]),
    "lit-explicit": ("shallow + literal explicit lambda step",
                     ["penalty.init=shallow", "penalty.literal=[explicit]"]),
    "lit-loop": ("shallow + literal while-loop (tau = 0: corrections to inner_max = 5)",
                 ["penalty.init=shallow", "penalty.literal=[loop]", "penalty.inner_max=5"]),
    "lit-kappa": ("shallow + literal eq. (23), rate 1e-9 (al only)",
                  ["penalty.init=shallow", "penalty.literal=[kappa]", "penalty.lr_kappa=1e-9"]),
    "lit-last": ("shallow + Algorithm 1's last line for lambda_{K-1}",
                 ["penalty.init=shallow", "penalty.literal=[last]"]),
    "lit-schedule": ("paper-init + lambda and kappa steps scheduled with the weights' lr",
                     PAPER_INIT + PAPER_LAMBDA + ["penalty.literal=[scaling,explicit,schedule]"]),
    "noise": ("shallow + noise 0.1 into lambda_{K-1}", ["penalty.init=shallow",
                                                         "penalty.noise=0.1"]),
    "T1": ("shallow + the paper's T = 1", ["penalty.init=shallow", "model.T=1.0"]),
    "al-beta": ("shallow + the paper's al beta (0.1, x0.1) and rate 1e-9 (al only)",
                ["penalty.init=shallow", "penalty.beta=0.1", "penalty.beta_rise=0.1",
                 "penalty.literal=[kappa]", "penalty.lr_kappa=1e-9"]),
}
AL_ONLY = {"lit-kappa", "al-beta"}


def variant_sets(name: str) -> list[str]:
    """The --set overrides of ablation variant ``name`` ('': the config as it is)."""
    if name not in VARIANTS and name:
        sys.exit(f"paper_tables: unknown variant {name!r} (of {', '.join(VARIANTS)})")
    return OURS + VARIANTS[name][1] if name else []


def table_sun_ablation(args) -> list[dict]:
    rows = []
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    for method in args.methods.split(","):
        for name in names:
            if name in AL_ONLY and method != "al":
                continue
            with tempfile.TemporaryDirectory() as d:
                r = train(args.config or config_of(method), args.k,
                          SUN_QUIET + variant_sets(name) + args.set,
                          Path(d))
            r["variant"], r["method"] = name, method
            rows.append(r)
            print(f"  done {method} {name}: acc {r['val_accuracy']:.3f} "
                  f"{r.get('failed', '')}", file=sys.stderr)
    print(f"K = {args.k}, config {args.config or 'configs/levelset_METHOD.yaml'} "
          f"{' '.join(args.set)}\n")
    print("| method | variant | test acc | train loss (serial pass) | final violation "
          "| violation at the end of each beta phase |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ends = ", ".join(f"{v:.2e}" for _, v in phase_ends(r))
        acc = f"{r['val_accuracy']:.3f}" if "failed" not in r else \
            f"failed: {r['failed'].removeprefix('mgrit-nn: ')}"
        print(f"| {r['method']} | {r['variant']}: {VARIANTS[r['variant']][0]} "
              f"| {acc} | {r['train_loss']:.4g} "
              f"| {r['violation'][-1]:.2e} | {ends} |")
    return rows


def tail_mean(r: dict, col: str, n: int = 20) -> float:
    v = np.asarray(r.get(col, [np.nan]), dtype=float)[-n:]
    return float(np.mean(v))


# single-level at train.lr: at a parpas.lr made for a predicted start it hardly trains
PARPAS_VARIANTS = {"prediction": [],
                   "single-level": ["parpas.coarse_iters=0", "parpas.lr=null"]}


def table_parpas(args) -> list[dict]:
    rows = []
    variants = {"serial": ["train.method=serial"], **PARPAS_VARIANTS}
    for name in args.configs.split(","):
        config = f"configs/{name}_parpas.yaml"
        runs = [("serial", 1)] + [(v, P) for P in map(int, args.ranks.split(","))
                                  for v in ("prediction", "single-level")]
        for seed in map(int, args.seeds.split(",")):
            for variant, P in runs:
                with tempfile.TemporaryDirectory() as d:
                    # the variant's own keys last: --set parpas.coarse_iters=... must not
                    # turn the single-level runs into predicted ones
                    r = train(config, P, [f"model.seed={seed}"] + args.set + variants[variant],
                              Path(d), cols=("regression_mse", "regression_rel_mse"))
                r.update(config=name, variant=variant, P=P, seed=seed,
                         mse=tail_mean(r, "regression_mse"),
                         rel=tail_mean(r, "regression_rel_mse"))
                rows.append(r)
                print(f"  done {name} {variant} P={P} seed {seed}: acc {r['val_accuracy']:.3f}"
                      f" mse {r['mse']:.2e}", file=sys.stderr)
    print(f"seeds {args.seeds} {' '.join(args.set)}; regression columns: mean of the last 20 "
          "steps\n")
    print("| problem | ranks | variant | seed | train / val acc | regression MSE | relative MSE "
          "| mean square co-state | MSE prediction / single-level | wall [s] "
          "(prediction phase) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = ""
        if r["variant"] == "single-level":
            pred = next(q for q in rows if q["variant"] == "prediction" and q["P"] == r["P"]
                        and q["config"] == r["config"] and q["seed"] == r["seed"])
            ratio = f"{pred['mse'] / r['mse']:.3g}"
        sq = r["mse"] / r["rel"] if r["rel"] > 0 else float("nan")
        pre = f" ({sum(r['prediction_s']):.1f})" if r.get("prediction_s") else ""
        print(f"| {r['config']} | {r['P']} | {r['variant']} | {r['seed']} "
              f"| {r['train_accuracy']:.3f} / {r['val_accuracy']:.3f} | {r['mse']:.2e} "
              f"| {r['rel']:.3f} | {sq:.2e} | {ratio} | {r['wall_time_s']:.1f}{pre} |")
    return rows


def table_lct(args) -> list[dict]:
    rows = []
    seeds = list(map(int, args.seeds.split(",")))
    for P in [1] + list(map(int, args.ranks.split(","))):
        for seed in seeds:
            sets = (["train.method=serial"] if P == 1 else []) + [f"model.seed={seed}"]
            with tempfile.TemporaryDirectory() as d:
                r = train("configs/digits_local_critic.yaml", P, args.set + sets, Path(d))
            r.update(P=P, seed=seed)
            rows.append(r)
            print(f"  done P={P} seed {seed}: acc {r['val_accuracy']:.4f}", file=sys.stderr)
    print(f"seeds {args.seeds} (model.seed) {' '.join(args.set)}\n")
    print("| ranks | method | val acc per seed | mean | mean - serial [points] "
          "| wall [s], mean |")
    print("|---|---|---|---|---|---|")
    by = {P: [r for r in rows if r["P"] == P] for P in dict.fromkeys(r["P"] for r in rows)}
    base = np.mean([r["val_accuracy"] for r in by[1]])
    for P, rs in by.items():
        acc = [r["val_accuracy"] for r in rs]
        print(f"| {P} | {rs[0]['method']} | {', '.join(f'{a:.4f}' for a in acc)} "
              f"| {np.mean(acc):.4f} | {100 * (np.mean(acc) - base):+.2f} "
              f"| {np.mean([r['wall_time_s'] for r in rs]):.1f} |")
    print("\nsub-models (f_1..f_i + c_i; the last row is the full model), "
          "validation accuracy as mean over the seeds\n")
    print("| ranks | sub-model | residual layers | parameters | val acc, mean | per seed |")
    print("|---|---|---|---|---|---|")
    for P, rs in by.items():
        if P == 1 or "submodels" not in rs[0]:
            continue
        for i, sm in enumerate(rs[0]["submodels"]):
            acc = [r["submodels"][i]["val_accuracy"] for r in rs]
            g = sm["groups"]
            name = "full model" if sm["head"] == "classifier" else \
                f"{'f_1' if g == 1 else f'f_1..f_{g}'} + c_{g}"
            print(f"| {P} | {name} | {sm['layers']} | {sm['params']} | {np.mean(acc):.4f} "
                  f"| {', '.join(f'{a:.4f}' for a in acc)} |")
    return rows


def table_sun_seeds(args) -> list[dict]:
    """Test accuracy per seed (``model.seed``: the weights' initialization; the data are fixed)
    at every K, its mean and spread, and the mean of the per-seed differences to K = 1."""
    import statistics as st
    rows, seeds = [], list(map(int, args.seeds.split(",")))
    methods, ks = args.methods.split(","), [int(k) for k in args.ks.split(",")]
    for method in methods:
        for K in ks:
            for seed in seeds:
                with tempfile.TemporaryDirectory() as d:
                    r = train(args.config or config_of(method), K,
                              SUN_QUIET + variant_sets(args.variants) + [f"model.seed={seed}"]
                              + args.set, Path(d))
                r.update(K=K, method=method, seed=seed)
                rows.append(r)
                print(f"  done {method} K={K} seed {seed}: acc {r['val_accuracy']:.3f}",
                      file=sys.stderr)
    print(f"config {args.config or 'configs/levelset_METHOD.yaml'} {' '.join(args.set)}; "
          f"seeds {args.seeds}\n")
    print("| method | K | test acc per seed | mean | sd | mean of (K - K=1) per seed [points] "
          "| train loss (serial pass), mean | start: shallow / replicated loss, mean |")
    print("|---|---|---|---|---|---|---|---|")
    for method in methods:
        one = {r["seed"]: r["val_accuracy"] for r in rows
               if r["method"] == method and r["K"] == 1}
        for K in ks:
            got = [r for r in rows if r["method"] == method and r["K"] == K]
            acc = [r["val_accuracy"] for r in got]
            # a diverged run (nan loss: training stops with an error) is shown as nan and
            # left out of the statistics, which say over how many seeds they are
            ok = [r for r in got if math.isfinite(r["val_accuracy"])]
            fin = [r["val_accuracy"] for r in ok]
            gap = [100 * (r["val_accuracy"] - one[r["seed"]]) for r in ok
                   if math.isfinite(one.get(r["seed"], math.nan))]
            sd = f"{st.stdev(fin):.3f}" if len(fin) > 1 else "-"
            mean = f"{st.mean(fin):.3f}" if fin else "-"
            if len(fin) < len(acc):
                mean += f" (of {len(fin)})"
            mean_gap = f"{st.mean(gap):+.1f}" if gap else "-"
            loss = [r["train_loss"] for r in ok]
            start = " / ".join(f"{st.mean(r[c] for r in got):.3g}"
                               for c in ("shallow_loss", "replicated_loss")
                               if got and all(c in r for r in got)) or "-"
            print(f"| {method} | {K} | {' / '.join(f'{a:.3f}' for a in acc)} "
                  f"| {mean} | {sd} | {mean_gap} "
                  f"| {f'{st.mean(loss):.3f}' if loss else '-'} | {start} |")
    return rows


def table_sun_start(args) -> list[dict]:
    """Does the shallow start transfer? Per shallow block length S (``--every``) and seed:
    the shallow network's step H = S h, its final loss and the replicated deep network's
    loss (one serial pass, before any step of the method), K = 1."""
    import yaml
    rows = []
    for S in map(int, args.every.split(",")):
        for seed in map(int, args.seeds.split(",")):
            with tempfile.TemporaryDirectory() as d:
                r = train(args.config or config_of("penalty"), 1, SUN_QUIET + [
                    "penalty.init=shallow", f"penalty.shallow_every={S}", "train.steps=1",
                    f"model.seed={seed}"] + args.set, Path(d))
                model = yaml.safe_load((Path(d) / "config.yaml").read_text())["model"]
            r.update(S=S, seed=seed, H=S * model["T"] / model["layers"])
            rows.append(r)
            print(f"  done S={S} seed {seed}: replicated {r.get('replicated_loss')}",
                  file=sys.stderr)
    print(f"config {args.config or config_of('penalty')} {' '.join(args.set)}, K = 1\n")
    print("| S (layers per shallow block) | shallow step H | seed | shallow loss "
          "| replicated deep network's loss | shallow training [s] |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['S']} | {r['H']:.3g} | {r['seed']} | {r['shallow_loss']:.4f} "
              f"| {r['replicated_loss']:.4f} | {r['shallow_s']:.1f} |")
    return rows


TABLES = {"sun": table_sun, "sun-seeds": table_sun_seeds, "sun-ablation": table_sun_ablation,
          "sun-start": table_sun_start, "parpas": table_parpas, "lct": table_lct}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--config", default=None, help="default: configs/levelset_METHOD.yaml")
    p.add_argument("--methods", default="penalty,al")
    p.add_argument("--ks", default="1,2,3,4", help="sun: stage counts K")
    p.add_argument("--k", type=int, default=4, help="sun-ablation: the K")
    p.add_argument("--variants", default="",
                   help=f"sun-ablation: of {','.join(VARIANTS)}; sun, sun-seeds: one of "
                   "them (default: the config as it is)")
    p.add_argument("--every", default="1,2,3,6,15,30",
                   help="sun-start: shallow block lengths (penalty.shallow_every)")
    p.add_argument("--ranks", default="2,4", help="parpas, lct: rank counts")
    p.add_argument("--configs", default="swissroll,ellipses", help="parpas: problems")
    p.add_argument("--seeds", default="0", help="parpas, lct, sun-seeds: model.seed values")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    print(f"load before: {uptime()}\n")
    rows = TABLES[args.table](args)
    print(f"\nload after: {uptime()}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
