"""Generated (synthetic) data sets and scikit-learn's bundled ``digits``.

Every generator draws ``n_train + n_val`` points from ``numpy.random.default_rng(seed)``
(never the global RNG state) and splits them into the first ``n_train`` (training) and the
remaining ``n_val`` (validation) points.  Inputs are float64, labels int64.  Nothing is
standardized.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]

#: Class boundaries for ``peaks``: the 20/40/60/80 % quantiles of the peaks function on the
#: uniform 601 x 601 grid ``linspace(-3, 3, 601)^2`` (rounded to 4 decimals), so the five
#: classes each cover about a fifth of the square [-3, 3]^2.
PEAKS_THRESHOLDS = (-0.3043, 0.0016, 0.1509, 1.3060)

#: ``levelset``: radius bands r < 0.5, 0.5 <= r < 0.75, r >= 0.75.
LEVELSET_RADII = (0.5, 0.75)

#: ``ellipses``: semi-axes (a, b) and bands of the elliptic radius sqrt((x/a)^2 + (y/b)^2).
ELLIPSE_AXES = (1.0, 0.6)
ELLIPSE_RADII = (0.7, 1.1)

#: ``swissroll``: number of turns of each spiral and the Gaussian noise level.
SWISSROLL_TURNS = 2.0
SWISSROLL_NOISE = 0.02


def peaks_function(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """MATLAB's ``peaks(x, y)``."""
    return (
        3 * (1 - x) ** 2 * np.exp(-(x**2) - (y + 1) ** 2)
        - 10 * (x / 5 - x**3 - y**5) * np.exp(-(x**2) - y**2)
        - 1 / 3 * np.exp(-((x + 1) ** 2) - y**2)
    )


def _peaks(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """x uniform in [-3, 3]^2, class = band of peaks(x) between ``PEAKS_THRESHOLDS``."""
    x = rng.uniform(-3.0, 3.0, size=(n, 2))
    f = peaks_function(x[:, 0], x[:, 1])
    return x, np.searchsorted(PEAKS_THRESHOLDS, f, side="right")


def _levelset(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """x uniform in [-1, 1]^2, class = band of |x| between ``LEVELSET_RADII``."""
    x = rng.uniform(-1.0, 1.0, size=(n, 2))
    r = np.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2)
    return x, np.searchsorted(LEVELSET_RADII, r, side="right")


def _ellipses(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """x uniform in [-1, 1]^2, class = band of the elliptic radius between ``ELLIPSE_RADII``."""
    x = rng.uniform(-1.0, 1.0, size=(n, 2))
    a, b = ELLIPSE_AXES
    rho = np.sqrt((x[:, 0] / a) ** 2 + (x[:, 1] / b) ** 2)
    return x, np.searchsorted(ELLIPSE_RADII, rho, side="right")


def _swissroll(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals (class 0 and 1, balanced), radius t in [0.15, 1], plus noise."""
    y = rng.permutation(np.arange(n) % 2)
    t = 0.15 + 0.85 * rng.uniform(0.0, 1.0, size=n)
    theta = 2 * np.pi * SWISSROLL_TURNS * t + np.pi * y
    x = np.stack([t * np.cos(theta), t * np.sin(theta)], axis=1)
    x += SWISSROLL_NOISE * rng.standard_normal(size=(n, 2))
    return x, y


GENERATORS: dict[str, tuple[Callable[[np.random.Generator, int], tuple], int]] = {
    "peaks": (_peaks, 5),
    "levelset": (_levelset, 3),
    "swissroll": (_swissroll, 2),
    "ellipses": (_ellipses, 3),
}


def load_synthetic(name: str, n_train: int, n_val: int, seed: int) -> Split:
    """Generate ``n_train + n_val`` points of data set ``name``; return train/val and n_classes."""
    if n_train <= 0:
        raise ValueError(f"data set '{name}': n_train must be positive, got {n_train}")
    gen, n_classes = GENERATORS[name]
    rng = np.random.default_rng(seed)
    x, y = gen(rng, n_train + n_val)
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], n_classes


def load_digits(n_train: int, n_val: int, seed: int) -> Split:
    """scikit-learn's 8x8 digits scaled to [0, 1] (divided by 16), shape (1, 8, 8).

    The 1797 samples are shuffled with ``seed``; the first ``n_train`` are the training set,
    the next ``n_val`` the validation set.  ``n_train <= 0`` means all but ``n_val``.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError(
            "data set 'digits' needs scikit-learn: pip install scikit-learn"
        ) from err
    bunch = sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64).reshape(-1, 1, 8, 8) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    total = len(y)
    if n_train <= 0:
        n_train = total - n_val
    if n_train <= 0 or n_train + n_val > total:
        raise ValueError(
            f"data set 'digits' has {total} samples: cannot take n_train={n_train} "
            f"and n_val={n_val}"
        )
    perm = np.random.default_rng(seed).permutation(total)
    tr, va = perm[:n_train], perm[n_train : n_train + n_val]
    return x[tr], y[tr], x[va], y[va], 10
