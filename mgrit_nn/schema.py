"""The one helper every config section is declared with (``mgrit_nn.config`` and the
method sections of ``mgrit_nn.methods.registry``), and the checks of a value against its
declaration: type (:func:`coerce`), bounds (:func:`out_of_bounds`), near misses of a key
or a choice (:func:`did_you_mean`)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union

INT_RANGE = (-2**63, 2**63 - 1)      # every int option fits a 64-bit integer


def opt(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None) -> Any:
    """A schema field with its default, one-line documentation and bounds: every number of
    the value (each element of a list; null is exempt) must be ``>= ge`` / ``> gt`` /
    ``<= le``."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def type_name(tp: Any) -> str:
    """A field's type as the docs and the messages write it."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, value) with ints accepted for floats; bools are never numbers; an int
    must fit 64 bits."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return (value in typing.get_args(tp)), value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if origin is list:                # [] is a valid list (no milestones); per-level options
        if not isinstance(value, list):   # are checked for emptiness in validate()
            return False, value
        (arg,) = typing.get_args(tp)
        vals = [coerce(v, arg) for v in value]
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
        return (isinstance(value, int) and not isinstance(value, bool)
                and INT_RANGE[0] <= value <= INT_RANGE[1]), value
    return isinstance(value, tp), value


def choices(tp: Any) -> list:
    """The Literal values anywhere in a field's type (``relax``: of the scalar and the list)."""
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    return [c for arg in typing.get_args(tp) for c in choices(arg)]


def did_you_mean(word: Any, options: list[str], full: dict[str, str] | None = None) -> str:
    """``"; did you mean 'x'?"`` for the option nearest ``word`` (case aside; a short word
    may differ more), else ``""``; ``full`` maps an option to the name said."""
    if not isinstance(word, str) or not options:
        return ""
    lower = {o.lower(): o for o in reversed(options)}
    near = [lower[word.lower()]] if word.lower() in lower else \
        [lower[m] for m in difflib.get_close_matches(word.lower(), list(lower), n=1,
                                                      cutoff=0.6 if len(word) <= 3 else 0.7)]
    return f"; did you mean '{(full or {}).get(near[0], near[0])}'?" if near else ""


def type_error(key: str, value: Any, tp: Any) -> str:
    """The one message for a value of the wrong type (or out of the 64-bit range), with the
    nearest choice for a misspelt one."""
    if isinstance(value, int) and not isinstance(value, bool) and "int" in type_name(tp) \
            and not INT_RANGE[0] <= value <= INT_RANGE[1]:
        return f"{key}: {value} does not fit a 64-bit integer"
    options = [str(c) for c in choices(tp)]
    bad = next((v for v in (value if isinstance(value, list) else [value])
                if v not in options), value)
    return f"{key}: expected {type_name(tp)}, got {value!r}{did_you_mean(bad, options)}"


def out_of_bounds(section: str, obj) -> list[tuple[bool, str, str]]:
    """The ``ge``/``gt`` bounds of a section's field declarations (and: no float is inf or
    nan), as checks."""
    out = []
    for f in dataclasses.fields(obj):
        value, ge, gt, le = (getattr(obj, f.name), *(f.metadata.get(b) for b in ("ge", "gt",
                                                                                "le")))
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
        if le is not None:
            out.append((all(v <= le for v in numbers), f"{section}.{f.name}",
                        f"must be <= {le:g}, got {value}"))
    return out


def at_level(value: Any, l: int) -> Any:
    """The value of a scalar-or-list option on level ``l``: the last listed one repeats."""
    values = value if isinstance(value, list) else [value]
    return values[min(l, len(values) - 1)]


def per_level(value: Any, n: int) -> list:
    """A scalar-or-list option expanded to ``n`` per-level values (see :func:`at_level`)."""
    return [at_level(value, l) for l in range(n)]
