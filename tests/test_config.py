"""Config schema: YAML + overrides, types, impossible values, generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgrit_nn.config import ConfigError, load_config, validate
from mgrit_nn.docs import schema_markdown
from mgrit_nn.schema import per_level

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  layers: 16\nmgrit:\n  cfactor: [4, 2]\n")
    cfg = load_config(str(f), ["mgrit.tol=1e-8", "model.T=2", "data.path=null",
                               "mgrit.relax=F"])
    assert cfg.model.layers == 16 and cfg.mgrit.cfactor == [4, 2]
    assert cfg.mgrit.tol == 1e-8 and isinstance(cfg.model.T, float) and cfg.model.T == 2.0
    assert cfg.mgrit.relax == "F" and cfg.data.path is None
    assert cfg.model.width == 8                     # untouched default


@pytest.mark.parametrize("overrides,needle", [
    (["model.depth=3"], "unknown config key 'model.depth'"),
    (["solver.levels=3"], "unknown config section 'solver'"),
    (["model.layers=3.5"], "model.layers: expected int, got 3.5"),
    (["model.layers=true"], "model.layers: expected int"),
    (["mgrit.cycle=W"], "mgrit.cycle: expected 'V' | 'F'"),
    (["mgrit.cfactor=[4, x]"], "mgrit.cfactor: expected"),
    (["mgrit.levels"], "expected section.key=value"),
    (["mgrit.relax=FF"], "mgrit.relax: expected 'F' | 'FCF' | 'FCFCF'"),
    (["data.name=imagenet"], "data.name: expected 'peaks' | "),
])
def test_bad_keys_and_types_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value)


@pytest.mark.parametrize("overrides,ranks,needle", [
    (["mgrit.cfactor=1"], 1, "mgrit.cfactor: must be >= 2"),
    (["mgrit.cfactor=[4, 1]"], 1, "mgrit.cfactor: must be >= 2"),
    (["mgrit.levels=0"], 1, "mgrit.levels: must be >= 1"),
    (["model.layers=3"], 5, "5 ranks need at least 4 layers"),
    (["data.name=mnist", "data.path=/no/such/dir"], 1, "data:"),
])
def test_impossible_values(overrides, ranks, needle):
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg, ranks)
    assert needle in str(e.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/no/such/file.yaml")


def test_per_level_repeats_last():
    assert per_level(4, 3) == [4, 4, 4]
    assert per_level([2, 8], 4) == [2, 8, 8, 8]


def test_shipped_configs_are_valid():
    for f in sorted((ROOT / "configs").glob("*.yaml")):
        validate(load_config(str(f)), 1)


def test_docs_config_reference_matches_schema():
    assert (ROOT / "docs" / "config.md").read_text().strip() == schema_markdown().strip(), \
        "docs/config.md is stale: run `mgrit-nn schema > docs/config.md`"


def test_cuda_aware_setting_wins_and_detection_answers():
    """runtime.cuda_aware overrides; detection asks the MPI library (the PyPI MPICH here
    has MPIX_Query_cuda_support and no CUDA) and never raises."""
    from mgrit_nn.runtime import cuda_aware_mpi

    assert cuda_aware_mpi(True) is True and cuda_aware_mpi(False) is False
    assert cuda_aware_mpi(None) in (True, False)
    assert load_config(None, ["runtime.cuda_aware=true"]).runtime.cuda_aware is True


def test_resolved_config_loads_again(tmp_path):
    """OUT/config.yaml (the resolved config, with empty lists) is a valid config file."""
    cfg = load_config(None, ["train.method=penalty"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(str(path), []) == cfg
    with pytest.raises(ConfigError, match="mgrit.cfactor: an empty list"):
        validate(load_config(None, ["mgrit.cfactor=[]"]), 1)


@pytest.mark.parametrize("text,needle", [
    ("train:\n  lr: 0.1\n  lr: 0.2\n", "line 3, column 3: duplicate key 'lr'"),
    ("train:\n  lr: [0.1\n", "is not valid YAML: line 3"),
])
def test_yaml_problems_are_one_line_naming_the_place(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("overrides,needle", [
    (["train.factor=-0.5"], "train.factor: must be > 0"),
    (["train.milestones=[10, -3]"], "train.milestones: must be >= 0"),
    (["train.lbfgs_max_ls=0"], "train.lbfgs_max_ls: must be >= 1"),
    (["data.n_train=100", "data.batch_size=101"], "data.batch_size: 101 is more than"),
    (["train.momentum=-0.1"], "train.momentum: must be >= 0"),
    (["train.weight_decay=-1"], "train.weight_decay: must be >= 0"),
    (["train.lr=.inf"], "train.lr: must be a finite number"),
    (["model.T=.inf"], "model.T: must be a finite number"),
    (["mgrit.tol=.nan"], "mgrit.tol: must be a finite number"),
    (["parallel.data_replicas=0"], "parallel.data_replicas: must be >= 1"),
])
def test_values_once_accepted_silently(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        validate(load_config(None, overrides), 1)
    validate(load_config(None, ["data.n_train=100", "data.batch_size=100"]), 1)


def test_a_binary_config_file_is_named(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=f"config file {path} is not a text"):
        load_config(str(path))



@pytest.mark.parametrize("overrides,needle", [
    (["model.widht=3"], "unknown config key 'model.widht'; did you mean 'model.width'?"),
    (["modle.width=3"], "unknown config section 'modle'; did you mean 'model'?"),
    (["model.lr=0.1"], "did you mean 'train.lr' or 'critic.lr' or 'parpas.lr'?"),
    (["model.momentun=0.1"], "did you mean 'train.momentum'?"),
    (["train.method=oneshoot"], "got 'oneshoot'; did you mean 'oneshot'?"),
    (["train.optimizer=Adam"], "did you mean 'adam'?"),
    (["mgrit.relax=[FCF, FFC]"], "got ['FCF', 'FFC']; did you mean 'FCF'?"),
    (["model.seed=100000000000000000000000"], "model.seed: 100000000000000000000000 does not "
                                              "fit a 64-bit integer"),
    (["model.seed=1.0e+23"], "model.seed: expected int, got 1e+23"),
])
def test_near_misses_are_named_in_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_no_far_fetched_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.depth=3"])
    assert "did you mean" not in str(e.value) and "(known: kind, layers" in str(e.value)


@pytest.mark.parametrize("overrides,needle", [
    (["mgrit.levels=65"], "mgrit.levels: must be <= 64"),
    (["runtime.threads=1000000"], "runtime.threads: must be <= 4096"),
    (["data.seed=-1"], "data.seed: must be >= 0"),
    (["data.n_train=0"], "data.n_train: must be >= 1 for the generated set 'peaks'"),
    (["model.width=1000000"], "model.width: needs about"),
    (["model.layers=100000000"], "model.layers: needs about"),
    (["data.n_train=10000000000"], "data.n_train: needs about"),
    (["data.name=digits", "model.kind=conv", "model.channels=100000"], "model.channels: "),
    (["runtime.graphs=emulate"], "runtime.graphs: needs every layer on one rank \\(here 2"),
    (["runtime.graphs=cuda", "runtime.device=cpu", "parallel.data_replicas=2"],
     "runtime.graphs: cuda needs runtime.device auto or cuda"),
    (["runtime.graphs=emulate", "runtime.compile=true", "parallel.data_replicas=2"],
     "runtime.graphs: and runtime.compile: choose one"),
    (["runtime.graphs=off"], "runtime.graphs: expected 'eager' | 'cuda' | 'emulate'"),
])
def test_values_refused_before_any_work(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        validate(load_config(None, overrides), 2)


def test_memory_estimate_terms_and_what_fits():
    from mgrit_nn.memory import LIBRARIES, estimate_memory, machine_memory, mgrit_state_sets

    cfg = load_config(str(ROOT / "configs/peaks.yaml"))
    terms = estimate_memory(cfg, 1)
    assert set(terms) == {"libraries", "weights", "states", "evaluation", "warm start",
                          "method", "data"}
    # N = 64, cfactor 4, 1 rank: levels of 65, 17, 5 points (min_coarse 2 stops before 1
    # interval), each with a ghost slot; u on level 0 per solver (2 x 66); coarse u and g
    # once for both solvers (2 x (18 + 6)); Euler's linearization on level 0 only (66); a
    # step's two scratch row sets of 65 / 4; C-evaluations (65 + 17 + 5) / 4
    sets = 2 * 66 + 2 * (18 + 6) + 66 + 2 * 65 / 4 + (65 + 17 + 5) / 4
    assert mgrit_state_sets(cfg, 1) == sets
    verlet = load_config(str(ROOT / "configs/peaks.yaml"), ["model.step=verlet"])
    assert mgrit_state_sets(verlet, 1) == sets + (18 + 6) / 2    # its coarse D2 (half a state)
    one_set = 5000 * 8 * 4                                  # batch x width x float32
    assert terms["states"] == int(mgrit_state_sets(cfg, 1) * one_set)
    # the warm start: forward and adjoint at ceil(65 / cfactor 4) = 17 C-points
    assert terms["warm start"] == 2 * 17 * one_set and terms["libraries"] == LIBRARIES
    half = load_config(str(ROOT / "configs/peaks.yaml"), ["train.warm_dtype=bfloat16"])
    assert estimate_memory(half)["warm start"] == terms["warm start"] // 2
    serial = load_config(str(ROOT / "configs/peaks.yaml"), ["train.method=serial"])
    assert estimate_memory(serial)["states"] == 4 * 65 * one_set      # autograd: 4 per layer
    assert terms["evaluation"] == 0                # full batch: the solver's storage serves
    # the whole-set forward pass (66 states of 5000 samples) fits in the step's states
    assert estimate_memory(serial)["evaluation"] == 0
    bigger = load_config(str(ROOT / "configs/peaks.yaml"), ["train.method=serial",
                                                            "data.batch_size=100"])
    assert estimate_memory(bigger)["evaluation"] == 66 * one_set - 4 * 65 * 100 * 8 * 4
    four = estimate_memory(cfg, 4)
    assert four["states"] < terms["states"] / 3.5 and four["warm start"] == 2 * 5 * one_set
    assert 0 < sum(terms.values()) < machine_memory()
    wide = load_config(None, ["model.width=1000000"])
    assert max(estimate_memory(wide), key=estimate_memory(wide).get) == "weights"


def test_warnings_of_legal_but_suspicious_configs(tmp_path):
    from mgrit_nn.config import read_config

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    cfg, notes = read_config(str(empty))
    assert cfg == load_config(None) and notes == [f"config file {empty} is empty: every key "
                                                  "takes its default"]
    _, notes = read_config(None, ["penalty.beta=-1"])
    assert notes == ["penalty: set, but train.method oneshot does not read it (its keys have "
                     "no effect)"]
    assert read_config(None, ["train.method=penalty", "penalty.beta=2"])[1] == []
