"""Tests for mgrit_nn.data: synthetic sets, digits, file loaders (tiny fake files), batches."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from mgrit_nn.data import (
    DATASETS,
    FILE_DATASETS,
    Dataset,
    batches,
    check_data,
    load_dataset,
)
from mgrit_nn.data.synthetic import PEAKS_THRESHOLDS, peaks_function

SYNTHETIC = {"peaks": 5, "levelset": 3, "swissroll": 2, "ellipses": 3}


# ----------------------------------------------------------------------------- synthetic
@pytest.mark.parametrize("name,n_classes", sorted(SYNTHETIC.items()))
def test_synthetic_shapes_and_labels(name: str, n_classes: int) -> None:
    ds = load_dataset(name, n_train=300, n_val=50, seed=3)
    assert isinstance(ds, Dataset)
    assert ds.name == name and ds.n_classes == n_classes and ds.input_shape == (2,)
    assert ds.x_train.shape == (300, 2) and ds.x_val.shape == (50, 2)
    assert ds.y_train.shape == (300,) and ds.y_val.shape == (50,)
    assert ds.x_train.dtype == torch.float64 and ds.x_val.dtype == torch.float64
    assert ds.y_train.dtype == torch.int64 and ds.y_val.dtype == torch.int64
    assert ds.x_train.device.type == "cpu"
    y = torch.cat([ds.y_train, ds.y_val])
    assert int(y.min()) >= 0 and int(y.max()) < n_classes
    assert set(y.tolist()) == set(range(n_classes))
    assert torch.isfinite(ds.x_train).all()


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_determinism(name: str) -> None:
    a = load_dataset(name, n_train=100, n_val=20, seed=7)
    b = load_dataset(name, n_train=100, n_val=20, seed=7)
    c = load_dataset(name, n_train=100, n_val=20, seed=8)
    for field in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.x_train, c.x_train)
    # the split is of one generated sample: train then val
    d = load_dataset(name, n_train=120, n_val=0, seed=7)
    assert torch.equal(d.x_train, torch.cat([a.x_train, a.x_val]))
    assert d.x_val.shape == (0, 2)


def test_peaks_balance_and_rule() -> None:
    ds = load_dataset("peaks", n_train=1600, n_val=400, seed=0)
    x = torch.cat([ds.x_train, ds.x_val]).numpy()
    y = torch.cat([ds.y_train, ds.y_val]).numpy()
    assert x.min() >= -3 and x.max() <= 3
    counts = np.bincount(y, minlength=5)
    assert counts.sum() == 2000 and (counts >= 100).all(), counts
    f = peaks_function(x[:, 0], x[:, 1])
    lo = np.array((-np.inf, *PEAKS_THRESHOLDS))[y]
    hi = np.array((*PEAKS_THRESHOLDS, np.inf))[y]
    assert ((lo <= f) & (f < hi)).all()
    assert peaks_function(np.array(0.0), np.array(0.0)) == pytest.approx(
        3 * np.exp(-1) - 1 / 3 * np.exp(-1)
    )


def test_levelset_radius_rule() -> None:
    ds = load_dataset("levelset", n_train=1000, n_val=200, seed=1)
    x = torch.cat([ds.x_train, ds.x_val])
    y = torch.cat([ds.y_train, ds.y_val])
    assert float(x.abs().max()) <= 1.0
    r = torch.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2)
    expected = torch.where(r < 0.5, 0, torch.where(r < 0.75, 1, 2))
    assert torch.equal(y, expected)


def test_swissroll_balanced() -> None:
    ds = load_dataset("swissroll", n_train=101, n_val=99, seed=0)
    assert int(torch.cat([ds.y_train, ds.y_val]).sum()) == 100


def test_synthetic_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("peaks", n_train=0)
    with pytest.raises(ValueError, match="n_val"):
        load_dataset("peaks", n_train=10, n_val=-1)


# ----------------------------------------------------------------------------- digits
def test_digits() -> None:
    ds = load_dataset("digits", n_train=500, n_val=100, seed=0)
    assert ds.input_shape == (1, 8, 8) and ds.n_classes == 10
    assert ds.x_train.shape == (500, 1, 8, 8) and ds.x_val.shape == (100, 1, 8, 8)
    assert ds.x_train.dtype == torch.float64
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) == 1.0
    assert set(ds.y_train.tolist()) == set(range(10))
    same = load_dataset("digits", n_train=500, n_val=100, seed=0)
    assert torch.equal(ds.x_train, same.x_train) and torch.equal(ds.y_val, same.y_val)
    assert not torch.equal(ds.y_train, load_dataset("digits", 500, 100, seed=1).y_train)
    full = load_dataset("digits", n_train=0, n_val=97, seed=0)
    assert full.x_train.shape[0] == 1700
    with pytest.raises(ValueError, match="1797"):
        load_dataset("digits", n_train=1700, n_val=200)


# ----------------------------------------------------------------------------- MNIST
def _idx(arr: np.ndarray, magic: int | None = None) -> bytes:
    code = 0x0800 | arr.ndim if magic is None else magic
    return struct.pack(f">I{arr.ndim}I", code, *arr.shape) + arr.astype(np.uint8).tobytes()


def _write_mnist(d, gz: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        if gz:
            (d / f"{name}.gz").write_bytes(gzip.compress(_idx(arr)))
        else:
            (d / name).write_bytes(_idx(arr))
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, gz: bool) -> None:
    a = _write_mnist(tmp_path, gz, np.random.default_rng(int(gz)))
    assert check_data("mnist", str(tmp_path)) is None
    ds = load_dataset("mnist", str(tmp_path), n_train=0, n_val=3)
    assert ds.input_shape == (1, 28, 28) and ds.n_classes == 10
    assert ds.x_train.dtype == torch.float64 and ds.y_train.dtype == torch.int64
    exp_x = torch.from_numpy(a["train-images-idx3-ubyte"].astype(np.float64) / 255.0)
    assert torch.equal(ds.x_train, exp_x.reshape(12, 1, 28, 28))
    assert ds.y_train.tolist() == a["train-labels-idx1-ubyte"].tolist()
    exp_v = torch.from_numpy(a["t10k-images-idx3-ubyte"][:3].astype(np.float64) / 255.0)
    assert torch.equal(ds.x_val, exp_v.reshape(3, 1, 28, 28))
    assert ds.y_val.tolist() == a["t10k-labels-idx1-ubyte"][:3].tolist()
    part = load_dataset("mnist", str(tmp_path), n_train=4, n_val=5)
    assert torch.equal(part.x_train, ds.x_train[:4]) and part.x_val.shape[0] == 5
    with pytest.raises(ValueError, match="only 12"):
        load_dataset("mnist", str(tmp_path), n_train=13, n_val=1)


def test_mnist_corrupt(tmp_path) -> None:
    a = _write_mnist(tmp_path, False, np.random.default_rng(0))
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(_idx(a["train-images-idx3-ubyte"], magic=0x12345678))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic"):
        load_dataset("mnist", str(tmp_path), n_train=5, n_val=1)
    bad.write_bytes(_idx(a["train-images-idx3-ubyte"])[:-1])  # truncated
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", str(tmp_path), n_train=5, n_val=1)
    lab = tmp_path / "train-labels-idx1-ubyte"  # count mismatch with images
    bad.write_bytes(_idx(a["train-images-idx3-ubyte"]))
    lab.write_bytes(_idx(a["train-labels-idx1-ubyte"][:11]))
    with pytest.raises(ValueError, match="12 images"):
        load_dataset("mnist", str(tmp_path), n_train=5, n_val=1)


def test_mnist_check_missing(tmp_path) -> None:
    msg = check_data("mnist", str(tmp_path))
    assert msg is not None and "train-images-idx3-ubyte" in msg and str(tmp_path) in msg
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", str(tmp_path))
    assert "not a directory" in (check_data("mnist", str(tmp_path / "nope")) or "")


# ----------------------------------------------------------------------------- CIFAR-10
def _write_cifar(d, rng: np.random.Generator) -> dict[str, dict]:
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("data_batch_1", 3), ("data_batch_2", 2), ("test_batch", 4)):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"batch_label": name.encode(),
        }
        (d / name).write_bytes(pickle.dumps(batch))
        out[name] = batch
    return out


@pytest.mark.parametrize("parent", [False, True])
def test_cifar_round_trip(tmp_path, parent: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    b = _write_cifar(folder, np.random.default_rng(5))
    path = str(tmp_path if parent else folder)
    assert check_data("cifar10", path) is None
    ds = load_dataset("cifar10", path, n_train=0, n_val=4)
    assert ds.input_shape == (3, 32, 32) and ds.n_classes == 10
    assert ds.x_train.shape == (5, 3, 32, 32) and ds.x_val.shape == (4, 3, 32, 32)
    rows = np.concatenate([b["data_batch_1"][b"data"], b["data_batch_2"][b"data"]])
    # explicit CHW: channel c, pixel (i, j) is row entry 1024 c + 32 i + j
    for k, (c, i, j) in enumerate([(0, 0, 0), (1, 5, 7), (2, 31, 31), (0, 31, 0), (2, 0, 31)]):
        assert float(ds.x_train[k, c, i, j]) == rows[k, 1024 * c + 32 * i + j] / 255.0
    assert torch.equal(ds.x_train, torch.from_numpy(rows.reshape(5, 3, 32, 32) / 255.0))
    labels = b["data_batch_1"][b"labels"] + b["data_batch_2"][b"labels"]
    assert ds.y_train.tolist() == labels
    assert torch.equal(
        ds.x_val, torch.from_numpy(b["test_batch"][b"data"].reshape(4, 3, 32, 32) / 255.0)
    )
    assert ds.y_val.tolist() == b["test_batch"][b"labels"]
    part = load_dataset("cifar10", path, n_train=2, n_val=1)
    assert torch.equal(part.x_train, ds.x_train[:2])
    assert part.y_val.tolist() == b["test_batch"][b"labels"][:1]


def test_cifar_missing_and_bad(tmp_path) -> None:
    assert "test_batch" in (check_data("cifar10", str(tmp_path)) or "")
    _write_cifar(tmp_path, np.random.default_rng(0))
    (tmp_path / "data_batch_1").unlink()
    assert load_dataset("cifar10", str(tmp_path), n_train=0, n_val=1).x_train.shape[0] == 2
    (tmp_path / "data_batch_2").unlink()
    assert "data_batch" in (check_data("cifar10", str(tmp_path)) or "")
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset("cifar10", str(tmp_path), n_train=0, n_val=1)


# ----------------------------------------------------------------------------- Indian Pines
def _write_ip(d, corrected: bool = True) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import savemat

    rng = np.random.default_rng(11)
    cube = rng.integers(1000, 9000, (5, 4, 7)).astype(np.uint16)
    cube[..., 3] = 4242  # constant band: std 0 must not produce NaN
    gt = np.zeros((5, 4), dtype=np.uint8)
    gt[0, 1:3] = 1
    gt[2, :] = 2
    gt[3, 0] = 3
    gt[4, 2:] = 3
    fname, key = ("Indian_pines_corrected", "indian_pines_corrected") if corrected else (
        "Indian_pines", "indian_pines")
    savemat(d / f"{fname}.mat", {key: cube})
    savemat(d / "Indian_pines_gt.mat", {"indian_pines_gt": gt})
    return cube, gt


@pytest.mark.parametrize("corrected", [True, False])
def test_indian_pines(tmp_path, corrected: bool) -> None:
    cube, gt = _write_ip(tmp_path, corrected)
    assert check_data("indian_pines", str(tmp_path)) is None
    ds = load_dataset("indian_pines", str(tmp_path), n_train=0, n_val=3, seed=2)
    n_lab = int((gt > 0).sum())
    assert n_lab == 9
    assert ds.x_train.shape == (6, 7) and ds.x_val.shape == (3, 7)
    assert ds.input_shape == (7,) and ds.n_classes == 3
    x = torch.cat([ds.x_train, ds.x_val])
    y = torch.cat([ds.y_train, ds.y_val])
    assert sorted(y.tolist()) == sorted((gt[gt > 0].astype(np.int64) - 1).tolist())
    assert torch.allclose(x.mean(0), torch.zeros(7, dtype=torch.float64), atol=1e-12)
    std = x.std(0, unbiased=False)
    assert torch.allclose(std[[0, 1, 2, 4, 5, 6]], torch.ones(6, dtype=torch.float64))
    assert torch.equal(x[:, 3], torch.zeros(9, dtype=torch.float64))
    # each sample is the standardized spectrum of a pixel with that label
    spectra = cube[gt > 0].astype(np.float64)
    sd = spectra.std(0)
    z = (spectra - spectra.mean(0)) / np.where(sd > 0, sd, 1.0)
    labels = gt[gt > 0].astype(np.int64) - 1
    for xi, yi in zip(x.numpy(), y.tolist(), strict=True):
        k = int(np.argmin(np.abs(z - xi).sum(1)))
        assert np.allclose(z[k], xi) and labels[k] == yi
    again = load_dataset("indian_pines", str(tmp_path), n_train=0, n_val=3, seed=2)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_val, ds.y_val)
    with pytest.raises(ValueError, match="9 labelled"):
        load_dataset("indian_pines", str(tmp_path), n_train=8, n_val=2)


def test_indian_pines_missing(tmp_path) -> None:
    assert "Indian_pines_corrected.mat" in (check_data("indian_pines", str(tmp_path)) or "")
    _write_ip(tmp_path)
    (tmp_path / "Indian_pines_gt.mat").unlink()
    assert "Indian_pines_gt.mat" in (check_data("indian_pines", str(tmp_path)) or "")


# ----------------------------------------------------------------------------- batches
def test_batches_full() -> None:
    for bs in (0, -1, 10, 50):
        out = batches(10, bs, seed=0, epoch=3)
        assert len(out) == 1 and torch.equal(out[0], torch.arange(10))
        assert out[0].dtype == torch.int64


def test_batches_partition_and_determinism() -> None:
    out = batches(23, 5, seed=4, epoch=0)
    assert [len(b) for b in out] == [5, 5, 5, 5, 3]
    assert all(b.dtype == torch.int64 for b in out)
    assert torch.equal(torch.sort(torch.cat(out)).values, torch.arange(23))
    assert not torch.equal(torch.cat(out), torch.arange(23))
    again = batches(23, 5, seed=4, epoch=0)
    assert all(torch.equal(a, b) for a, b in zip(out, again, strict=True))
    other_epoch = torch.cat(batches(23, 5, seed=4, epoch=1))
    other_seed = torch.cat(batches(23, 5, seed=5, epoch=0))
    assert not torch.equal(torch.cat(out), other_epoch)
    assert not torch.equal(torch.cat(out), other_seed)


def test_batches_ignore_global_rng() -> None:
    torch.manual_seed(0)
    a = batches(50, 7, seed=1, epoch=2)
    torch.manual_seed(123)
    torch.rand(10)
    b = batches(50, 7, seed=1, epoch=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------- check_data
def test_check_data_messages() -> None:
    msg = check_data("nosuch", None)
    assert msg is not None and "nosuch" in msg
    assert all(name in msg for name in DATASETS)
    for name in FILE_DATASETS:
        m = check_data(name, None)
        assert m is not None and "data.path" in m
        assert check_data(name, "") is not None
    for name in ("peaks", "levelset", "swissroll", "ellipses", "digits"):
        assert check_data(name, None) is None
    with pytest.raises(ValueError, match="valid names"):
        load_dataset("nosuch")
    with pytest.raises(ValueError, match="data.path"):
        load_dataset("mnist")
