"""Typed configuration: one dataclass schema, YAML files, ``--set`` overrides.

Every option is declared once, with its default and a one-line doc (the
``doc`` metadata); ``docs/config.md`` is generated from this schema.
Validation happens before any work, and every problem becomes one
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mgrit_nn.methods.registry import (
    METHOD_SECTIONS,
    METHODS,
    SECTIONS_OF_METHODS,
    method_doc,
)
from mgrit_nn.schema import opt


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
                      ge=1)
    cfactor: int | list[int] = opt(4, "coarsening factor, one value or a list per level", ge=2)
    min_coarse: int = opt(2, "no level with fewer than this many intervals is created", ge=1)
    relax: Relax | list[Relax] = opt("FCF", "F | FCF | FCFCF, one value or a list per level")
    cycle: Literal["V", "F"] = opt("V", "V-cycle or F-cycle")
    max_iter: int = opt(20, "maximum MGRIT iterations per solve", ge=1)
    tol: float = opt(1e-10, "absolute tolerance on the level-0 C-point residual norm", ge=0)
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
    seed: int = opt(0, "seed of generation, splitting and shuffling")
    batch_size: int = opt(0, "mini-batch size; 0 means full batch", ge=0)


@dataclass
class TrainConfig:
    method: MethodName = opt("oneshot", method_doc())
    steps: int = opt(100, "optimization steps (one mini-batch each)", ge=0)
    fwd_iters: int = opt(2, "oneshot: forward MGRIT iterations per step", ge=1)
    adj_iters: int = opt(2, "oneshot: adjoint MGRIT iterations per step", ge=1)
    warm_start: bool = opt(True, "oneshot: start each solve from the samples' previous iterates")
    optimizer: Literal["sgd", "adam", "lbfgs"] = opt("adam", "sgd | adam | lbfgs (full batch)")
    lr: float = opt(0.01, "learning rate (lbfgs: initial step of the line search)", gt=0)
    momentum: float = opt(0.9, "sgd momentum", ge=0)
    weight_decay: float = opt(0.0, "sgd/adam weight decay", ge=0)
    schedule: Literal["constant", "step", "cosine"] = opt("constant", "learning-rate schedule")
    milestones: list[int] = opt([], "step schedule: steps where lr is multiplied by factor",
                                ge=0)
    factor: float = opt(0.1, "step schedule: lr factor at each milestone", gt=0)
    lbfgs_memory: int = opt(10, "lbfgs: stored (s, y) pairs", ge=1)
    lbfgs_max_ls: int = opt(20, "lbfgs: maximum backtracking steps of the Armijo search",
                            ge=1)
    eval_every: int = opt(10, "validate every this many steps (0: only at the end)", ge=0)


@dataclass
class CheckpointConfig:
    every: int = opt(0, "write OUT/checkpoints/step_XXXXXXXX.h5 every this many steps, 0: at end",
                     ge=0)
    keep: int = opt(3, "keep the newest this many checkpoints (0: keep all)", ge=0)


@dataclass
class BenchConfig:
    repeats: int = opt(5, "mgrit-nn bench: timed repetitions (the median is reported)", ge=1)
    warmup: int = opt(2, "mgrit-nn bench: untimed repetitions first", ge=0)
    exact: bool = opt(True, "mgrit-nn bench: also time the exact (to tolerance) MGRIT gradient")


@dataclass
class ParallelConfig:
    data_replicas: int = opt(1, "D replicas of the layer-parallel group (ranks = D x layer ranks)",
                             ge=1)


@dataclass
class RuntimeConfig:
    dtype: Literal["float32", "float64"] = opt("float64", "dtype of states, weights and messages")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: node-local rank's GPU, else CPU")
    threads: int = opt(0, "torch threads per rank; 0: cores / ranks on the node", ge=0)
    cuda_aware: bool | None = opt(None, "MPI sends GPU memory directly; null: ask the MPI "
                                  "library (else staged through pinned host buffers)")
    compile: bool = opt(False, "torch.compile the forward step of the MGRIT relaxation "
                        "(fuses bias, activation and update; first solve pays the compile)")


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


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, value) with ints accepted for floats; bools are never numbers."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return (value in typing.get_args(tp)), value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if origin is list:                # [] is a valid list (no milestones); per-level options
        if not isinstance(value, list):   # are checked for emptiness in validate()
            return False, value
        (arg,) = typing.get_args(tp)
        vals = [_coerce(v, arg) for v in value]
        return all(ok for ok, _ in vals), [v for _, v in vals]
    if tp is type(None):
        return value is None, value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-10 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, tp), value


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
            raise ConfigError(f"unknown config section '{name}' (known: {', '.join(types)})")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{name}' must be a mapping of keys")
        kwargs = {}
        for key, value in values.items():
            if key not in types[name]:
                known = ", ".join(types[name])
                raise ConfigError(f"unknown config key '{name}.{key}' (known: {known})")
            ok, v = _coerce(value, types[name][key])
            if not ok:
                raise ConfigError(
                    f"{name}.{key}: expected {_type_name(types[name][key])}, got {value!r}"
                )
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
        raise ConfigError(f"--set {key}: cannot parse value {value!r}: {exc}") from None
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


def load_config(path: str | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or nothing: defaults) and apply ``--set`` overrides."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {path} is a directory; give a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.load(p.read_text(), Loader=_UniqueKeyLoader) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not a text (YAML) file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_one_line(exc)}") \
                from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    for text in overrides:
        (section, key), value = parse_override(text)
        sec = raw.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"config section '{section}' must be a mapping of keys")
        sec[key] = value
    return build_config(raw)


def at_level(value: Any, l: int) -> Any:
    """The value of a scalar-or-list option on level ``l``: the last listed one repeats."""
    values = value if isinstance(value, list) else [value]
    return values[min(l, len(values) - 1)]


def per_level(value: Any, n: int) -> list:
    """A scalar-or-list option expanded to ``n`` per-level values (see :func:`at_level`)."""
    return [at_level(value, l) for l in range(n)]


def _out_of_bounds(section: str, obj) -> list[tuple[bool, str, str]]:
    """The ``ge``/``gt`` bounds of a section's field declarations (and: no float is inf or
    nan), as checks."""
    out = []
    for f in dataclasses.fields(obj):
        value, ge, gt = getattr(obj, f.name), f.metadata.get("ge"), f.metadata.get("gt")
        numbers = [v for v in (value if isinstance(value, list) else [value]) if v is not None]
        out.append((all(math.isfinite(v) for v in numbers if isinstance(v, float)),
                    f"{section}.{f.name}", f"must be a finite number, got {value}"))
        if ge is not None:
            out.append((all(v >= ge for v in numbers), f"{section}.{f.name}",
                        f"must be >= {ge:g}, got {value}"))
        if gt is not None:
            out.append((all(v > gt for v in numbers), f"{section}.{f.name}",
                        f"must be > {gt:g}{' (or null)' if f.default is None else ''}, "
                        f"got {value}"))
    return out


def validate(cfg: Config, ranks: int) -> None:
    """Impossible values, checked before any work; raises one ConfigError. Bounds come from
    the field declarations (a method's own section only when it runs), cross-field checks
    from here and from the method's registry entry."""
    from mgrit_nn.data import check_data

    d, t, D = cfg.data, cfg.train, cfg.parallel.data_replicas
    spec = METHODS[t.method]
    checks = []
    for name in SECTIONS:
        if name not in SECTIONS_OF_METHODS or name == spec.section:
            sec = cfg.adjoint.resolved(cfg.mgrit) if name == "adjoint" else getattr(cfg, name)
            checks += _out_of_bounds(name, sec)
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
        (layer_ranks <= cfg.model.layers + 1, "model.layers",
         f"{layer_ranks} ranks need at least {layer_ranks - 1} layers "
         f"(N+1 = {cfg.model.layers + 1} points, one or more per rank)"),
        *spec.validate(cfg, ranks),
    ]
    for sec, g in (("mgrit", cfg.mgrit), ("adjoint", cfg.adjoint)):
        checks += [(getattr(g, name) != [], f"{sec}.{name}",
                    "an empty list: give one value or one per level")
                   for name in ("cfactor", "relax")]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"{key}: {msg}")
    problem = check_data(d.name, d.path)
    if problem is not None:
        raise ConfigError(f"data: {problem}")
