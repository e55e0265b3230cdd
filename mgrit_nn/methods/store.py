"""Per-sample arrays a method keeps across steps, in memory or memory-mapped.

``penalty.store`` (lambda, kappa) and ``train.warm_store`` (the one-shot warm starts) choose
where they live: ``memory`` (a tensor on the run's device) or ``mmap`` (a tensor on the CPU
backed by a file in ``store_dir``, the temp folder by default, for states that exceed RAM:
the operating system pages them in and out). The file is deleted as soon as it is mapped,
so nothing is left behind, even by a crash; its pages stay the process's until it exits.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def sample_tensor(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                  mmap_dir: str | None = None, mmap: bool = False) -> torch.Tensor:
    """A zeroed tensor of ``shape``: on ``device``, or (``mmap``) on the CPU, backed by a
    memory-mapped file in ``mmap_dir`` (default: the temp folder)."""
    if not mmap:
        return torch.zeros(shape, dtype=dtype, device=device)
    folder = Path(mmap_dir or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    itemsize = torch.empty((), dtype=dtype).element_size()
    fd, name = tempfile.mkstemp(prefix="mgrit_nn_", suffix=".bin", dir=folder)
    try:
        os.close(fd)
        raw = np.memmap(name, dtype=np.uint8, mode="w+",
                        shape=(max(1, math.prod(shape) * itemsize),))
    finally:
        os.unlink(name)                 # mapped: the pages live on until the process ends
    flat = torch.from_numpy(raw)[:math.prod(shape) * itemsize]
    return flat.view(dtype).view(shape)
