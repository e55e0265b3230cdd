"""Data sets for layer-parallel training: generated 2-D sets, digits, MNIST, CIFAR-10, Indian Pines.

Public API: :class:`Dataset`, :data:`DATASETS`, :data:`FILE_DATASETS`, :func:`check_data`,
:func:`load_dataset`, :func:`batches`.  Everything is deterministic for a given seed (only
seeded ``numpy.random.default_rng`` / ``torch.Generator`` are used, never global RNG state),
so every MPI rank gets identical data and mini-batches.
"""

from __future__ import annotations

import importlib
import importlib.util
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mgrit_nn.config import DataName
from mgrit_nn.data import files, synthetic

__all__ = ["DATASETS", "FILE_DATASETS", "BatchStream", "Dataset", "batches", "check_data",
           "load_dataset"]

DATASETS: tuple[str, ...] = typing.get_args(DataName)      # data.name's choices
FILE_DATASETS: tuple[str, ...] = ("mnist", "cifar10", "indian_pines")

_FILE_HINTS = {
    "mnist": "a directory with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...)",
    "cifar10": "the cifar-10-batches-py directory (or its parent)",
    "indian_pines": "a directory with Indian_pines_corrected.mat and Indian_pines_gt.mat",
}
_FINDERS = {
    "mnist": files.find_mnist,
    "cifar10": files.find_cifar10,
    "indian_pines": files.find_indian_pines,
}


@dataclass
class Dataset:
    """A classification data set split into training and validation parts (CPU tensors)."""

    x_train: torch.Tensor  # float64, shape (n_train, *input_shape)
    y_train: torch.Tensor  # int64 class labels, shape (n_train,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]  # (features,) for vectors, (C, H, W) for images
    name: str


def _normalize(name: str) -> str:
    return str(name).strip().lower()


def check_data(name: str, path: str | None) -> str | None:
    """Return None if data set ``name`` can be loaded from ``path``, else one human message.

    Cheap: only checks the name, required packages and that the files exist.
    """
    key = _normalize(name)
    if key not in DATASETS:
        return f"unknown data set '{name}'; valid names: {', '.join(DATASETS)}"
    if key == "digits" and importlib.util.find_spec("sklearn") is None:
        return "data set 'digits' needs scikit-learn: pip install scikit-learn"
    if key in FILE_DATASETS:
        if path is None or not str(path).strip():
            return f"data set '{key}' needs data.path: {_FILE_HINTS[key]}"
        return _FINDERS[key](Path(str(path)).expanduser())
    return None


def load_dataset(
    name: str, path: str | None = None, n_train: int = 1000, n_val: int = 200, seed: int = 0
) -> Dataset:
    """Load data set ``name`` (see :data:`DATASETS`), deterministically for ``seed``.

    Synthetic sets generate ``n_train + n_val`` points (``n_train`` must be positive).
    For ``digits``, ``mnist``, ``cifar10`` and ``indian_pines``, ``n_train <= 0`` means all
    available training samples; MNIST/CIFAR-10 validate on the first ``n_val`` official test
    samples.  Raises ValueError with a clear message on bad input.
    """
    msg = check_data(name, path)
    if msg:
        raise ValueError(msg)
    key = _normalize(name)
    n_train, n_val = int(n_train), int(n_val)
    if n_val < 0:
        raise ValueError(f"n_val must be >= 0, got {n_val}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if key in synthetic.GENERATORS:
        split = synthetic.load_synthetic(key, n_train, n_val, seed)
    elif key == "digits":
        split = synthetic.load_digits(n_train, n_val, seed)
    else:
        p = Path(str(path)).expanduser()
        if key == "mnist":
            split = files.load_mnist(p, n_train, n_val)
        elif key == "cifar10":
            split = files.load_cifar10(p, n_train, n_val)
        else:
            split = files.load_indian_pines(p, n_train, n_val, seed)
    x_tr, y_tr, x_va, y_va, n_classes = split

    def _x(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))

    def _y(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    return Dataset(
        x_train=_x(x_tr), y_train=_y(y_tr), x_val=_x(x_va), y_val=_y(y_va),
        n_classes=int(n_classes), input_shape=tuple(int(s) for s in x_tr.shape[1:]), name=key,
    )


def batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Int64 index tensors of the mini-batches of one epoch (identical on every rank).

    ``batch_size <= 0`` or ``>= n``: one full batch ``arange(n)``.  Otherwise a permutation
    from a ``torch.Generator`` seeded from ``(seed, epoch)``, cut into consecutive chunks of
    ``batch_size`` (the last may be shorter).
    """
    if batch_size <= 0 or batch_size >= n:
        return [torch.arange(max(n, 0), dtype=torch.int64)]
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64]).generate_state(1, np.uint64)
    gen = torch.Generator().manual_seed(int(state[0]))
    perm = torch.randperm(n, generator=gen, dtype=torch.int64)
    return [chunk.clone() for chunk in perm.split(batch_size)]


class BatchStream:
    """Mini-batches epoch after epoch: the epochs ``first, first + step, ...`` of
    :func:`batches`. ``epoch`` is the next epoch to start, ``queue`` the rest of this one."""

    def __init__(self, n: int, batch_size: int, seed: int, first: int = 0,
                 step: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.step = n, batch_size, seed, step
        self.epoch, self.queue = first, []

    def next(self) -> torch.Tensor:
        if not self.queue:
            self.queue = batches(self.n, self.batch_size, self.seed, self.epoch)
            self.epoch += self.step
        return self.queue.pop(0)

    def restore(self, epoch: int, left: int) -> None:
        """Continue at the position of a stream that had started ``epoch`` with ``left``
        batches of the current epoch still to come (a checkpoint's data position)."""
        self.epoch = epoch
        self.queue = batches(self.n, self.batch_size, self.seed, epoch - self.step)[-left:] \
            if left else []
