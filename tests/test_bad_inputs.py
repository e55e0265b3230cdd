"""A fast subset of the bad-input probe (benchmarks/bad_inputs.py, issue 18): the same case
table, config cases checked in-process (one ConfigError, one line, the key named) and a
few through mpiexec, classified as the probe does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mgrit_nn.config import ConfigError, read_config, validate

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "benchmarks/bad_inputs.py")
probe = sys.modules.setdefault("bad_inputs", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(probe)
CASES = {c.name: c for c in probe.all_cases()}

IN_PROCESS = [
    "model.layers type", "model.layers bound", "model.seed nonsense", "mgrit.cfactor bound",
    "adjoint.relax nonsense", "train.method nonsense", "train.lr nonsense",
    "penalty.beta bound", "critic.lr bound", "data.seed bound",
    "--set unknown key widht", "--set unknown section modle",
    "--set key in the wrong section", "--set unparsable value", "--set relax list typo",
    "yaml duplicate key", "yaml binary file", "yaml tab indentation", "yaml python tag",
    "width 1e6 (memory)", "layers 1e8 (memory)", "n_train 10^10 (memory)",
    "n_train 0 synthetic", "seed 1.0e23 (float)", "yaml empty file",
]
THROUGH_MPIEXEC = ["--set method oneshoot", "width 1e6 (memory)", "yaml only comments"]


def config_inputs(case, tmp: Path) -> tuple[str, list[str]]:
    """The config file and the ``--set`` overrides of a case's command line."""
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    return args[1], sets


def test_the_probe_has_enough_cases_and_every_key():
    from mgrit_nn.config import SECTIONS

    assert len(CASES) >= 130
    keys = {f"{s}.{f}" for s, cls in SECTIONS.items() for f in cls.__dataclass_fields__}
    assert keys <= {c.named if isinstance(c.named, str) else c.named[0]
                    for c in CASES.values()}


@pytest.mark.parametrize("name", IN_PROCESS)
def test_config_case_is_one_message_naming_the_key(name, tmp_path):
    case = CASES[name]
    assert case.inproc, name
    if case.setup:
        probe.SETUPS[case.setup](tmp_path)
    path, sets = config_inputs(case, tmp_path)
    needles = [n.replace("{tmp}", str(tmp_path)) for n in
               ((case.named,) if isinstance(case.named, str) else case.named)]
    if case.expect == "warning":
        cfg, notes = read_config(path, sets)
        validate(cfg, case.ranks)
        assert any(all(n in note for n in needles) for note in notes), notes
        return
    with pytest.raises(ConfigError) as e:
        cfg, _ = read_config(path, sets)
        validate(cfg, case.ranks)
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in needles), message


@pytest.mark.parametrize("name", THROUGH_MPIEXEC)
def test_case_through_mpiexec_is_clear(name, tmp_path):
    case = CASES[name]
    result = probe.run_case(case, tmp_path, timeout=120)
    assert result["class"] == ("warning" if case.expect == "warning" else "clear"), result


@pytest.mark.parametrize("stderr,rc,cls", [
    ("mgrit-nn: config error: model.width: must be >= 1, got 0\n", 2, "clear"),
    ("mgrit-nn: config error: model.width: must be >= 1, got 0\n" * 2, 2, "multi-line"),
    ("mgrit-nn: config error: model.layers: must be >= 1, got 0\n", 2, "unclear"),
    ("mgrit-nn: config error: model.width: must be >= 1, got 0\n", 1, "unclear"),
    ("mgrit-nn: rank 0/2 failed: ValueError: width\n", 1, "raw error"),
    ("Traceback (most recent call last):\n  ...\nKeyError: 'width'\n", 1, "raw error"),
    ("", 0, "silently accepted"),
    ("2024-01-01 10:00:00,123 rank 0 mgrit_nn.config: config warning: model.width: odd\n", 0,
     "warning"),
    ("", None, "hang"),
])
def test_the_classifier_can_fail(stderr, rc, cls):
    case = probe.Case("x", (), "model.width")
    assert probe.classify(case, rc, stderr, "", Path("/tmp")) == cls
