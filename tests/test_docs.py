"""The documentation against the code: every config key documented (and no other), every
link between the docs resolves, every command documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mgrit_nn.cli import _parser
from mgrit_nn.config import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def schema_keys() -> set[str]:
    return {f"{name}.{f.name}" for name, cls in SECTIONS.items()
            for f in dataclasses.fields(cls)}


def documented_keys() -> set[str]:
    """The keys of docs/config.md: the first cell of every table row."""
    text = (ROOT / "docs" / "config.md").read_text()
    return set(re.findall(r"^\| `([A-Za-z_]\w*\.[A-Za-z_]\w*)` \|", text, flags=re.M))


def test_config_reference_lists_every_schema_key_and_no_other():
    schema, docs = schema_keys(), documented_keys()
    missing, extra = sorted(schema - docs), sorted(docs - schema)
    assert not missing and not extra, (
        f"docs/config.md is out of date (regenerate: mgrit-nn schema > docs/config.md)\n"
        f"  keys missing from the docs: {missing}\n  keys documented but not in the schema: "
        f"{extra}")
    assert len(schema) > 50                  # the parse found the tables, not an empty set


def test_links_between_docs_resolve():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.endswith(".png"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_every_command_and_job_template_is_documented():
    text = "\n".join(d.read_text() for d in DOCS)
    sub = next(a for a in _parser()._actions if a.dest == "command")
    for command in sub.choices:
        assert f"mgrit-nn {command}" in text, f"mgrit-nn {command} is not in the docs"
    for job in (ROOT / "jobs").glob("*.sbatch"):
        assert f"jobs/{job.name}" in text or f"mgrit-nn job {job.stem}" in text, job.name


def readme_methods() -> list[str]:
    """The methods of README.md's list under "Training methods": every backticked name
    before the first colon of a "- " item (``- `penalty`, `al`: ...``)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("Training methods (`train.method`):", 1)[1].split("\n\n", 2)[1]
    items = [ln for ln in block.splitlines() if ln.startswith("- ")]
    return [name for ln in items for name in re.findall(r"`(\w+)`", ln.split(":", 1)[0])]


def test_readme_lists_every_method_of_the_registry_and_no_other():
    from mgrit_nn.methods.registry import METHODS

    listed = readme_methods()
    assert len(listed) == len(set(listed)), f"README.md lists a method twice: {listed}"
    missing, extra = sorted(set(METHODS) - set(listed)), sorted(set(listed) - set(METHODS))
    assert not missing and not extra, (
        f"README.md's method list is out of date\n  methods it omits: {missing}\n"
        f"  methods it lists that the code lacks: {extra}")
