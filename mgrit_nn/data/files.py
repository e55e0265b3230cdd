"""Loaders for data sets read from files: MNIST (IDX), CIFAR-10 (python pickles), Indian Pines.

``path`` is the directory holding the files.  The ``find_*`` functions only check that the
files exist (cheap, used by :func:`mgrit_nn.data.check_data`) and return a message or None;
the ``load_*`` functions read them and raise ``ValueError`` naming the file on bad content.
Images are scaled to [0, 1]; Indian Pines spectra are standardized per band.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from pathlib import Path

import numpy as np

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_SUBDIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
IP_CUBES = (("Indian_pines_corrected.mat", "indian_pines_corrected"),
            ("Indian_pines.mat", "indian_pines"))
IP_GT = ("Indian_pines_gt.mat", "indian_pines_gt")


def _dir_message(path: Path) -> str | None:
    return None if path.is_dir() else f"data.path: {path}: not a directory"


def _take(n: int | None, total: int, what: str) -> int:
    """Number of samples to take (None: all); ValueError if more than available."""
    if n is None:
        return total
    if n > total:
        raise ValueError(f"{what}: asked for {n} samples, only {total} available")
    return n


# ----------------------------------------------------------------------------- MNIST
def _mnist_file(path: Path, name: str) -> Path | None:
    for cand in (path / name, path / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def find_mnist(path: Path) -> str | None:
    """None if all four MNIST IDX files (plain or .gz) exist in ``path``, else a message."""
    msg = _dir_message(path)
    if msg:
        return msg
    for name in MNIST_FILES:
        if _mnist_file(path, name) is None:
            return f"data.path: {path}: no MNIST file {name}[.gz] found"
    return None


def read_idx(file: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally gzipped); check magic number and size."""
    try:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{file}: cannot read IDX file: {err}") from err
    if len(raw) < 4:
        raise ValueError(f"{file}: not an IDX file (only {len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = raw[3]
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or ndim == 0:
        raise ValueError(
            f"{file}: bad IDX magic number 0x{magic:08x} (expected 0x000008NN, unsigned byte)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{file}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise ValueError(
            f"{file}: {len(raw)} bytes, but the IDX header {dims} implies {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _mnist_pair(
    path: Path, images: str, labels: str, n: int | None
) -> tuple[np.ndarray, np.ndarray]:
    img_file, lab_file = _mnist_file(path, images), _mnist_file(path, labels)
    if img_file is None or lab_file is None:
        raise ValueError(find_mnist(path) or f"data.path: {path}: MNIST files missing")
    img, lab = read_idx(img_file), read_idx(lab_file)
    if img.ndim != 3:
        raise ValueError(f"{img_file}: expected 3 IDX dimensions (n, rows, cols), got {img.ndim}")
    if lab.ndim != 1:
        raise ValueError(f"{lab_file}: expected 1 IDX dimension, got {lab.ndim}")
    if len(img) != len(lab):
        raise ValueError(f"{img_file}: {len(img)} images but {lab_file.name} has {len(lab)}")
    if lab.size and lab.max() > 9:
        raise ValueError(f"{lab_file}: label {int(lab.max())} out of range 0..9")
    count = _take(n, len(lab), str(img_file))
    x = img[:count].astype(np.float64).reshape(count, 1, img.shape[1], img.shape[2]) / 255.0
    return x, lab[:count].astype(np.int64)


def load_mnist(path: Path, n_train: int, n_val: int) -> Split:
    """MNIST: first ``n_train`` training images (<= 0: all), first ``n_val`` test images."""
    x_tr, y_tr = _mnist_pair(path, *MNIST_FILES[:2], n_train if n_train > 0 else None)
    x_va, y_va = _mnist_pair(path, *MNIST_FILES[2:], max(n_val, 0))
    return x_tr, y_tr, x_va, y_va, 10


# ----------------------------------------------------------------------------- CIFAR-10
def cifar_dir(path: Path) -> Path:
    """``path`` itself if it holds CIFAR batches, else its ``cifar-10-batches-py`` subfolder."""
    names = (CIFAR_TEST, *CIFAR_TRAIN)
    if not any((path / f).is_file() for f in names) and (path / CIFAR_SUBDIR).is_dir():
        return path / CIFAR_SUBDIR
    return path


def find_cifar10(path: Path) -> str | None:
    """None if ``test_batch`` and at least one ``data_batch_i`` exist, else a message."""
    msg = _dir_message(path)
    if msg:
        return msg
    d = cifar_dir(path)
    if not (d / CIFAR_TEST).is_file():
        return (f"data.path: {path}: no CIFAR-10 file {CIFAR_TEST} found "
                f"(give the {CIFAR_SUBDIR} folder or its parent)")
    if not any((d / f).is_file() for f in CIFAR_TRAIN):
        return f"data.path: {path}: no CIFAR-10 file data_batch_1..5 found"
    return None


def read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle batch -> (uint8 (n, 3, 32, 32), int64 (n,))."""
    try:
        with open(file, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        data = d[b"data"] if b"data" in d else d["data"]
        labels = d[b"labels"] if b"labels" in d else d["labels"]
        data = np.asarray(data, dtype=np.uint8)
        labels = np.asarray(labels, dtype=np.int64)
    except Exception as err:
        raise ValueError(f"{file}: not a CIFAR-10 python batch: {err!r}") from err
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise ValueError(f"{file}: expected data (n, 3072) and n labels, got {data.shape}, "
                         f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{file}: labels out of range 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(path: Path, n_train: int, n_val: int) -> Split:
    """CIFAR-10: existing ``data_batch_1..5`` in order (first ``n_train``, <= 0: all) and the
    first ``n_val`` rows of ``test_batch``; pixels / 255, shape (3, 32, 32)."""
    msg = find_cifar10(path)
    if msg:
        raise ValueError(msg)
    d = cifar_dir(path)
    xs, ys, have = [], [], 0
    for name in CIFAR_TRAIN:
        if (d / name).is_file() and (n_train <= 0 or have < n_train):
            x, y = read_cifar_batch(d / name)
            xs.append(x)
            ys.append(y)
            have += len(y)
    x_tr, y_tr = np.concatenate(xs), np.concatenate(ys)
    n_tr = _take(n_train if n_train > 0 else None, len(y_tr), f"{d}: CIFAR-10 training batches")
    x_va, y_va = read_cifar_batch(d / CIFAR_TEST)
    n_va = _take(max(n_val, 0), len(y_va), str(d / CIFAR_TEST))
    return (x_tr[:n_tr].astype(np.float64) / 255.0, y_tr[:n_tr],
            x_va[:n_va].astype(np.float64) / 255.0, y_va[:n_va], 10)


# ----------------------------------------------------------------------------- Indian Pines
def _ip_cube_file(path: Path) -> tuple[Path, str] | None:
    for fname, key in IP_CUBES:
        if (path / fname).is_file():
            return path / fname, key
    return None


def find_indian_pines(path: Path) -> str | None:
    """None if a cube file, the ground-truth file and scipy are available, else a message."""
    msg = _dir_message(path)
    if msg:
        return msg
    if _ip_cube_file(path) is None:
        return (f"data.path: {path}: no Indian Pines file {IP_CUBES[0][0]} "
                f"or {IP_CUBES[1][0]} found")
    if not (path / IP_GT[0]).is_file():
        return f"data.path: {path}: no Indian Pines file {IP_GT[0]} found"
    if importlib.util.find_spec("scipy") is None:
        return "data set 'indian_pines' needs scipy to read .mat files: pip install scipy"
    return None


def _read_mat(file: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(file))
    except Exception as err:
        raise ValueError(f"{file}: cannot read .mat file: {err!r}") from err
    if key in mat:
        return np.asarray(mat[key])
    arrays = [k for k in mat if not k.startswith("__")]
    if len(arrays) == 1:
        return np.asarray(mat[arrays[0]])
    raise ValueError(f"{file}: no variable '{key}' (has {arrays})")


def load_indian_pines(path: Path, n_train: int, n_val: int, seed: int) -> Split:
    """Labelled pixels of Indian Pines: input = spectrum standardized per band (mean/std over
    all labelled pixels), label = gt - 1.  Pixels (row-major order) are shuffled with ``seed``;
    the first ``n_train`` (<= 0: all but ``n_val``) train, the next ``n_val`` validate.
    ``n_classes`` = largest label + 1 (16 for the real file, where labels 1..16 all occur)."""
    msg = find_indian_pines(path)
    if msg:
        raise ValueError(msg)
    cube_file, key = _ip_cube_file(path)  # type: ignore[misc]
    cube = _read_mat(cube_file, key)
    gt = _read_mat(path / IP_GT[0], IP_GT[1])
    if cube.ndim != 3 or gt.shape != cube.shape[:2]:
        raise ValueError(f"{cube_file}: cube shape {cube.shape} does not match "
                         f"ground truth shape {gt.shape} (expected H x W x bands and H x W)")
    mask = gt > 0
    x = cube[mask].astype(np.float64)
    y = gt[mask].astype(np.int64) - 1
    if len(y) == 0:
        raise ValueError(f"{path / IP_GT[0]}: no labelled pixels")
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    total = len(y)
    if n_train <= 0:
        n_train = total - n_val
    if n_train <= 0 or n_train + n_val > total:
        raise ValueError(f"data set 'indian_pines' has {total} labelled pixels: cannot take "
                         f"n_train={n_train} and n_val={n_val}")
    perm = np.random.default_rng(seed).permutation(total)
    tr, va = perm[:n_train], perm[n_train:n_train + n_val]
    return x[tr], y[tr], x[va], y[va], int(y.max()) + 1
