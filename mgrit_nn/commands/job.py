"""SLURM job templates (``jobs/*.sbatch``) and their rendering.

A template holds ``{{NAME}}`` settings: in ``#SBATCH`` lines (a line whose setting is
empty is dropped, so a site without accounts just leaves ``ACCOUNT`` empty) and in the
single-quoted shell variables at its top. ``render`` fills every setting from the
defaults below and the given values, and refuses to leave any unfilled.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"
PLACEHOLDER = re.compile(r"\{\{([A-Z_][A-Z0-9_]*)\}\}")

DEFAULTS: dict[str, str] = {
    "JOB_NAME": "mgrit-nn",
    "ACCOUNT": "",
    "PARTITION": "",
    "TIME": "01:00:00",
    "NODES": "1",
    "NTASKS": "",                 # empty: NODES x NTASKS_PER_NODE
    "NTASKS_PER_NODE": "4",
    "CPUS_PER_TASK": "1",
    "GPUS_PER_TASK": "1",
    "GPU_BIND": "closest",
    "OUTPUT": "%x-%j.out",
    "SIGNAL_SECONDS": "120",
    "ARRAY": "",                  # empty: give --array=... to sbatch
    "MODULES": "",
    "VENV": sys.prefix,           # the environment running mgrit-nn now
    "LAUNCHER": "srun",
    "LAUNCHER_ARGS": "",
    "BENCH": "0",
    "CONFIG": "",                 # empty: the job takes CONFIG OUT as arguments
    "OUT": "",
    "RUNS": "",
}
KIND_DEFAULTS = {"array": {"OUTPUT": "%x-%A_%a.out"}}


class TemplateError(ValueError):
    """A template or a setting that cannot be rendered."""


def templates() -> dict[str, Path]:
    """Template kind (file stem) -> path, for every ``jobs/*.sbatch``."""
    if not JOBS_DIR.is_dir():
        raise TemplateError(f"the job templates are not at {JOBS_DIR}: install mgrit_nn from "
                            "its repository with pip install -e")
    return {p.stem: p for p in sorted(JOBS_DIR.glob("*.sbatch"))}


def template_path(kind: str) -> Path:
    """A template by kind (``cpu``, ``gpu``, ``array``) or by path."""
    found = templates()
    if kind in found:
        return found[kind]
    path = Path(kind)
    if path.is_file():
        return path
    raise TemplateError(f"no job template '{kind}' (known: {', '.join(found)}; or a file path)")


def placeholders(text: str) -> list[str]:
    """The setting names a template uses, in order of first appearance."""
    return list(dict.fromkeys(PLACEHOLDER.findall(text)))


def parse_vars(items: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings (``--var``) as a dict."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            raise TemplateError(f"--var {item!r}: expected NAME=VALUE with an upper-case NAME")
        out[name] = value
    return out


def render(text: str, values: dict[str, str], kind: str = "") -> str:
    """Fill every ``{{NAME}}`` of a template; values override the defaults."""
    used = placeholders(text)
    unknown = sorted(set(values) - set(used))
    if unknown:
        raise TemplateError(f"the {kind or 'job'} template has no setting {', '.join(unknown)} "
                            f"(it has: {', '.join(used)})")
    settings = {**DEFAULTS, **KIND_DEFAULTS.get(kind, {}), **values}
    if not settings.get("NTASKS") and "NTASKS" in used:
        try:
            settings["NTASKS"] = str(int(settings["NODES"]) * int(settings["NTASKS_PER_NODE"]))
        except ValueError:
            raise TemplateError("NODES and NTASKS_PER_NODE must be integers, got "
                                f"{settings['NODES']!r} and {settings['NTASKS_PER_NODE']!r}") \
                from None
    missing = [name for name in used if name not in settings]
    if missing:
        raise TemplateError(f"no value for the job setting(s) {', '.join(missing)}")
    for name in used:
        value = settings[name]
        if "'" in value or "\n" in value or "{{" in value:
            raise TemplateError(f"job setting {name}: a value may not contain ', a newline "
                                f"or '{{{{', got {value!r}")
    lines = []
    for line in text.splitlines(keepends=True):
        names = placeholders(line)
        if names and line.startswith("#SBATCH"):
            if any(settings[n] == "" for n in names):
                continue                          # empty setting: leave the option to SLURM
            bad = [n for n in names if re.search(r"\s", settings[n])]
            if bad:
                raise TemplateError(f"job setting {bad[0]}: no spaces in an #SBATCH value, "
                                    f"got {settings[bad[0]]!r}")
        lines.append(PLACEHOLDER.sub(lambda m: settings[m.group(1)], line))
    out = "".join(lines)
    assert not PLACEHOLDER.search(out), "a setting was left unfilled"
    return out


def render_kind(kind: str, values: dict[str, str]) -> str:
    """Render the template ``kind`` (see :func:`template_path`)."""
    path = template_path(kind)
    return render(path.read_text(), values, path.stem)
