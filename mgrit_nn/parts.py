"""What the components put in a checkpoint's state dicts besides plain arrays.

A method's or the trainer's ``state_dict()`` is a nested dict in the global layout. A leaf
is an array, of which rank 0's value is written, or a :class:`Part`: this rank's rows of
a global array. The writer (:mod:`mgrit_nn.io.checkpoint`) gathers the Parts on rank 0 or
writes each rank's into its own shard; the components never see which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Part:
    """This rank's rows ``[start, start + len(data))`` of a global array of ``rows`` rows.
    A dataset one rank owns whole is a Part only that rank names (``start`` 0)."""
    data: np.ndarray
    start: int
    rows: int
