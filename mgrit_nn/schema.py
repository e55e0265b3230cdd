"""The one helper every config section is declared with (``mgrit_nn.config`` and the
method sections of ``mgrit_nn.methods.registry``)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def opt(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None) -> Any:
    """A schema field with its default, one-line documentation and bounds: every number of
    the value (each element of a list; null is exempt) must be ``>= ge`` / ``> gt``."""
    meta = {"doc": doc, "ge": ge, "gt": gt}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)
