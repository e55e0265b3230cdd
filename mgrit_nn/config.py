"""Typed configuration: one dataclass schema, YAML files, ``--set`` overrides.

Every option is declared once, with its default and a one-line doc (the
``doc`` metadata); ``docs/config.md`` is generated from this schema.
Validation happens before any work, and every problem becomes one
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mgrit_nn.methods.registry import (
    METHOD_SECTIONS,
    METHODS,
    SECTIONS_OF_METHODS,
    method_doc,
    writable,
)
from mgrit_nn.schema import coerce, did_you_mean, opt, out_of_bounds, type_error
from mgrit_nn.schema import type_name as _type_name  # noqa: F401 (docs.py reads it here)


class ConfigError(ValueError):
    """A configuration problem, reported as one clear message before any work."""


Relax = Literal["F", "FCF", "FCFCF"]
DataName = Literal["peaks", "levelset", "swissroll", "ellipses", "digits", "mnist", "cifar10",
                   "indian_pines"]
MethodName = Literal[tuple(METHODS)]        # type: ignore[valid-type]


@dataclass
class ModelConfig:
    kind: Literal["dense", "conv"] = opt("dense", "dense (width w) or conv (c channels, 3x3)")
    layers: int = opt(32, "number of residual steps N (fine grid points 0..N)", ge=1)
    T: float = opt(1.0, "final time; step size h = T / N", gt=0)
    width: int = opt(8, "state width w of the dense network", ge=1)
    channels: int = opt(4, "state channels c of the conv network", ge=1)
    activation: Literal["tanh", "relu", "softplus"] = opt("tanh", "activation sigma")
    step: Literal["euler", "verlet"] = opt(
        "euler", "euler: u + h*sigma(K u + b); verlet: Hamiltonian (y, z) pair (docs/mgrit.md)")
    init_std: float = opt(1.0, "std of residual weights, scaled by 1/sqrt(fan_in)", ge=0)
    seed: int = opt(0, "seed of the weight initialization (rank-count independent; seeds "
                    "equal modulo 2^32 give the same weights)")


@dataclass
class MgritConfig:
    levels: int = opt(10, "maximum number of levels; coarsening stops at min_coarse intervals",
                      ge=1, le=64)      # 64 levels of cfactor >= 2 need over 2^64 layers
    cfactor: int | list[int] = opt(4, "coarsening factor, one value or a list per level", ge=2)
    min_coarse: int = opt(2, "no level with fewer than this many intervals is created", ge=1)
    relax: Relax | list[Relax] = opt("FCF", "F | FCF | FCFCF, one value or a list per level")
    cycle: Literal["V", "F"] = opt("V", "V-cycle or F-cycle")
    max_iter: int = opt(20, "maximum MGRIT iterations per solve", ge=1)
    tol: float = opt(1e-10, "absolute, on the level-0 C-point residual norm, raised to the "
                     "rounding floor 10 eps ||u_C||; 0: always max_iter iterations", ge=0)
    init: Literal["zero", "copy", "coarse"] = opt("zero", "initial guess of a cold solve")
    skip: bool = opt(False, "cold solves: no relaxation/restriction work on the first "
                     "down-cycle (coarse levels start from the injected guess, g = 0)")


def _adjoint_config() -> type:
    """``adjoint``: every ``mgrit`` option, null meaning "as in mgrit" (one declaration)."""
    hints = typing.get_type_hints(MgritConfig)
    fields = [(f.name, hints[f.name] | None,
               field(default=None, metadata={**f.metadata,
                                             "doc": f"{f.metadata['doc']} (null: mgrit.{f.name})"}))
              for f in dataclasses.fields(MgritConfig)]

    def resolved(self, fwd: MgritConfig) -> MgritConfig:
        """The adjoint settings with every null taken from the forward ones."""
        return MgritConfig(**{f.name: getattr(fwd, f.name) if getattr(self, f.name) is None
                              else getattr(self, f.name) for f in dataclasses.fields(self)})
    return dataclasses.make_dataclass(
        "AdjointConfig", fields, namespace={"resolved": resolved, "__module__": __name__,
                                            "__doc__": "The adjoint (backward) MGRIT solve; "
                                            "null means: as in ``mgrit``."})


AdjointConfig = _adjoint_config()


@dataclass
class RegConfig:
    """Tikhonov terms added to the cross-entropy loss (h = T / N)."""

    theta: float = opt(0.0, "gamma: gamma*h/2 * sum_j (|K_j|^2 + |b_j|^2)", ge=0)
    ddt: float = opt(0.0, "gamma: gamma/(2h) * sum_j |theta_j - theta_{j-1}|^2 (smooth in time)",
                     ge=0)
    classifier: float = opt(0.0, "gamma: gamma/2 * (|W_out|^2 + |b_out|^2)", ge=0)
    opening: float = opt(0.0, "gamma: gamma/2 * (|W_in|^2 + |b_in|^2)", ge=0)


@dataclass
class DataConfig:
    name: DataName = opt("peaks", "the data set (docs/getting_started.md)")
    path: str | None = opt(None, "directory of the files of a file data set")
    n_train: int = opt(1000, "training samples (file sets: <= 0 means all)")
    n_val: int = opt(200, "validation samples", ge=0)
    seed: int = opt(0, "seed of generation, splitting and shuffling", ge=0)
    batch_size: int = opt(0, "mini-batch size; 0 means full batch", ge=0)


@dataclass
class TrainConfig:
    method: MethodName = opt("oneshot", method_doc())
    steps: int = opt(100, "optimization steps (one mini-batch each)", ge=0)
    fwd_iters: int = opt(2, "oneshot: forward MGRIT iterations per step", ge=1)
    adj_iters: int = opt(2, "oneshot: adjoint MGRIT iterations per step", ge=1)
    warm_start: bool = opt(True, "oneshot: start each solve from the samples' previous iterates")
    warm_dtype: Literal["same", "float32", "bfloat16", "float16"] = opt(
        "same", "oneshot: warm starts' dtype (lower: less memory, rounded; same: runtime's)")
    warm_store: Literal["memory", "mmap"] = opt(
        "memory", "oneshot: warm starts in memory (on the device) or memory-mapped on the CPU "
        "(a file in warm_store_dir, deleted once mapped: states that exceed RAM)")
    warm_store_dir: str | None = opt(None, "warm_store mmap: the files' folder (default: temp)")
    optimizer: Literal["sgd", "adam", "lbfgs"] = opt("adam", "sgd | adam | lbfgs (full batch)")
    lr: float = opt(0.01, "learning rate (lbfgs: initial step of the line search)", gt=0)
    momentum: float = opt(0.9, "sgd momentum", ge=0)
    weight_decay: float = opt(0.0, "sgd/adam weight decay", ge=0)
    schedule: Literal["constant", "step", "cosine"] = opt("constant", "learning-rate schedule")
    milestones: list[int] = opt([], "step schedule: steps where lr is multiplied by factor", ge=0)
    factor: float = opt(0.1, "step schedule: lr factor at each milestone", gt=0)
    lbfgs_memory: int = opt(10, "lbfgs: stored (s, y) pairs", ge=1)
    lbfgs_max_ls: int = opt(20, "lbfgs: most backtracking steps of the Armijo search", ge=1)
    eval_every: int = opt(10, "validate every this many steps (0: only at the end)", ge=0)


@dataclass
class CheckpointConfig:
    every: int = opt(0, "write OUT/checkpoints/step_XXXXXXXX.h5 every this many steps, 0: at end",
                     ge=0)
    keep: int = opt(3, "keep the newest this many checkpoints (0: keep all)", ge=0)
    layout: Literal["auto", "single", "sharded", "collective"] = opt(
        "auto", "single: rank 0 gathers and writes one file; sharded: each rank writes its "
        "own shard, one main file maps them; collective: all ranks write one file (h5py "
        "built with MPI); auto: collective if h5py has MPI, else sharded, on more than one "
        "layer rank (docs/hdf5.md)")


@dataclass
class BenchConfig:
    repeats: int = opt(5, "mgrit-nn bench: timed repetitions (the median is reported)", ge=1)
    warmup: int = opt(2, "mgrit-nn bench: untimed repetitions first (MGRIT: at least 1)", ge=0)
    exact: bool = opt(True, "mgrit-nn bench: also time the exact (to tolerance) MGRIT gradient")
    compile_serial: bool = opt(False, "mgrit-nn bench: also time serial autograd under "
                               "torch.compile (minutes at N = 1024); ratios against the faster")
    pipeline: bool = opt(False, "mgrit-nn bench: also time GPipe and 1F1B on the same ranks")
    max_microbatches: int = opt(32, "mgrit-nn bench: most micro-batches the pipeline tries", ge=1)
    pairs: int = opt(0, "mgrit-nn bench: rounds of serial, one-shot and (P > 1) one-shot on "
                     "one rank timed alternately, ratios per round (0: none)", ge=0)


@dataclass
class ParallelConfig:
    data_replicas: int = opt(1, "D replicas of the layer-parallel group (ranks = D x layer ranks)",
                             ge=1)


@dataclass
class RuntimeConfig:
    dtype: Literal["float32", "float64"] = opt("float32", "training dtype (check: float64)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: node-local rank's GPU, else CPU")
    threads: int = opt(0, "torch threads per rank; 0: cores / ranks on the node", ge=0,
                       le=4096)     # more than any node has; 10^6 crashed torch (SIGSEGV)
    cuda_aware: bool | None = opt(None, "MPI sends GPU memory directly; null: ask the MPI "
                                  "library (else staged through pinned host buffers)")
    compile: bool = opt(False, "torch.compile the forward step of the MGRIT relaxation "
                        "(fuses bias, activation and update; first solve pays the compile)")
    graphs: Literal["eager", "cuda", "emulate"] = opt(
        "eager", "record each kind of MGRIT iteration once, replay it (layers on one rank): "
        "cuda: CUDA graphs; emulate: the same contract checked on any device (slow)")


def _config() -> type:
    """The whole config: the common sections, with the methods' own sections (from their
    registry entries, in registry order) after ``train``."""
    common = {"model": ModelConfig, "mgrit": MgritConfig, "adjoint": AdjointConfig,
              "reg": RegConfig, "data": DataConfig, "train": TrainConfig}
    tail = {"parallel": ParallelConfig, "checkpoint": CheckpointConfig, "bench": BenchConfig,
            "runtime": RuntimeConfig}
    sections = {**common, **METHOD_SECTIONS, **tail}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
    return dataclasses.make_dataclass(
        "Config", [(name, cls, field(default_factory=cls)) for name, cls in sections.items()],
        namespace={"to_dict": to_dict, "to_yaml": to_yaml, "__module__": __name__})


Config = _config()


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _section_types() -> dict[str, dict[str, Any]]:
    return {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}


def _unknown(section: str, key: str | None, types: dict[str, dict[str, Any]]) -> str:
    """An unknown section (``key`` None) or key, with the nearest known name: the same key in
    another section, else a near miss (``model.widht``, ``modle``), else the known names."""
    where = {k: f"{s}.{k}" for s in reversed(types) for k in types[s]}   # first section wins
    if key is None:
        hint = did_you_mean(section, list(types)) or \
            (f"; did you mean '{where[section]}'?" if section in where else "")
        known = f" (known: {', '.join(types)})"
        return f"unknown config section '{section}'{hint or known}"
    elsewhere = [f"{s}.{k}" for s in types for k in types[s] if k == key and s != section]
    hint = (f"; did you mean {' or '.join(repr(e) for e in elsewhere)}?" if elsewhere else
            did_you_mean(key, list(types[section]), {k: f"{section}.{k}" for k in types[section]})
            or did_you_mean(key, list(where), where))
    known = f" (known: {', '.join(types[section])})"
    return f"unknown config key '{section}.{key}'{hint or known}"


def build_config(raw: dict) -> Config:
    """Type-check a nested dict against the schema (unknown keys rejected)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping of sections")
    types = _section_types()
    sections = {}
    for name, values in raw.items():
        if name not in types:
            raise ConfigError(_unknown(str(name), None, types))
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{name}' must be a mapping of keys, got "
                              f"{values!r}")
        kwargs = {}
        for key, value in values.items():
            if key not in types[name]:
                raise ConfigError(_unknown(name, str(key), types))
            ok, v = coerce(value, types[name][key])
            if not ok:
                raise ConfigError(type_error(f"{name}.{key}", value, types[name][key]))
            kwargs[key] = v
        sections[name] = SECTIONS[name](**kwargs)
    return Config(**sections)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` with the value parsed as YAML (so 3, 1e-8, [4, 2], null work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(f"--set {text!r}: the key must be section.key, e.g. mgrit.levels=3")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {value!r}: {_one_line(exc)}") \
            from None
    return path, parsed


def _one_line(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: where (line, column) and what."""
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark else what


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the last would win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_config(path: str | None = None,
                overrides: list[str] = ()) -> tuple[Config, list[str]]:
    """:func:`load_config`, and the warnings of a legal but suspicious input: an empty
    file, a method's section that the chosen method does not read."""
    raw: dict = {}
    notes = []
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {path} is a directory; give a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not a text (YAML) file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_one_line(exc)}") \
                from None
        if raw is None:
            notes.append(f"config file {path} is empty: every key takes its default")
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    for text in overrides:
        (section, key), value = parse_override(text)
        sec = raw.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"config section '{section}' must be a mapping of keys")
        sec[key] = value
    cfg = build_config(raw)
    method = cfg.train.method
    notes += [f"{s}: set, but train.method {method} does not read it (its keys have no effect)"
              for s in raw if s in SECTIONS_OF_METHODS and s != METHODS[method].section]
    return cfg, notes


def load_config(path: str | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or nothing: defaults) and apply ``--set`` overrides."""
    return read_config(path, overrides)[0]


def validate(cfg: Config, ranks: int) -> None:
    """Impossible values, checked before any work; raises one ConfigError. Bounds come from
    the field declarations (a method's own section only when it runs), cross-field checks
    from here and from the method's registry entry."""
    from mgrit_nn.data import check_data
    from mgrit_nn.io.collective import available as collective_hdf5
    from mgrit_nn.memory import ALL_SAMPLES, memory_problem

    d, t, D = cfg.data, cfg.train, cfg.parallel.data_replicas
    spec = METHODS[t.method]
    checks = []
    for name in SECTIONS:
        if name not in SECTIONS_OF_METHODS or name == spec.section:
            sec = cfg.adjoint.resolved(cfg.mgrit) if name == "adjoint" else getattr(cfg, name)
            checks += out_of_bounds(name, sec)
    layer_ranks = ranks // D if D >= 1 and ranks % D == 0 else ranks
    checks += [
        (D < 1 or ranks % D == 0, "parallel.data_replicas",
         f"{ranks} ranks cannot be split into {D} replicas"),
        (t.optimizer != "lbfgs" or d.batch_size == 0, "train.optimizer",
         "lbfgs needs full-batch training (data.batch_size: 0)"),
        (d.batch_size == 0 or d.batch_size >= D, "data.batch_size",
         f"a batch of {d.batch_size} cannot be shared by {D} replicas"),
        (d.n_train <= 0 or d.batch_size <= d.n_train, "data.batch_size",
         f"{d.batch_size} is more than data.n_train = {d.n_train} (0: full batch)"),
        (d.n_train >= 1 or d.name in ALL_SAMPLES, "data.n_train",
         f"must be >= 1 for the generated set '{d.name}' (<= 0 means all only for file sets)"),
        (layer_ranks <= cfg.model.layers + 1, "model.layers",
         f"{layer_ranks} ranks need at least {layer_ranks - 1} layers "
         f"(N+1 = {cfg.model.layers + 1} points, one or more per rank)"),
        (t.warm_store != "mmap" or writable(t.warm_store_dir), "train.warm_store_dir",
         f"{t.warm_store_dir or 'the temp folder'}: cannot create or write files there (the "
         "mmap store of the warm starts)"),
        (cfg.checkpoint.layout != "collective" or collective_hdf5(), "checkpoint.layout",
         "collective needs h5py built with MPI (h5py.get_config().mpi is false here): use "
         "sharded or auto (docs/hdf5.md says how to build one)"),
        (cfg.runtime.graphs == "eager" or layer_ranks == 1, "runtime.graphs",
         f"needs every layer on one rank (here {layer_ranks} layer ranks): the iterations of "
         "a chain of ranks exchange messages, which a graph cannot replay; use "
         "parallel.data_replicas = ranks or runtime.graphs: eager"),
        (cfg.runtime.graphs == "eager" or not cfg.runtime.compile, "runtime.graphs",
         "and runtime.compile: choose one (a recording replays the dispatched operations)"),
        (cfg.runtime.graphs != "cuda" or cfg.runtime.device != "cpu", "runtime.graphs",
         "cuda needs runtime.device auto or cuda (emulate checks the capture on a CPU)"),
        *spec.validate(cfg, ranks),
    ]
    for sec, g in (("mgrit", cfg.mgrit), ("adjoint", cfg.adjoint)):
        checks += [(getattr(g, name) != [], f"{sec}.{name}",
                    "an empty list: give one value or one per level")
                   for name in ("cfactor", "relax")]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"{key}: {msg}")
    memory = memory_problem(cfg, ranks)
    if memory is not None:
        raise ConfigError(f"{memory[0]}: {memory[1]}")
    problem = check_data(d.name, d.path)
    if problem is not None:
        raise ConfigError(f"data: {problem}")
