"""A cheap pre-flight memory estimate: refuse a run that cannot fit before any work.

``estimate_memory(cfg, ranks)`` adds up the big arrays of one rank from the config alone
(no data loaded, no torch): the weights with their gradients and optimizer state, the
states of the layers the rank owns for one batch, the one-shot warm start, the data set.
It is an estimate, a lower bound on purpose: MGRIT's coarse levels, autograd's
intermediates and the libraries come on top. :func:`memory_problem` refuses only a run
whose estimate exceeds this machine's physical memory, so that ``model.width=1000000`` or
``model.layers=100000000`` is one message naming the biggest term and the keys to change,
instead of an allocator error on every rank or the kernel's OOM killer much later.
A fuller pre-flight (coarse levels, GPU memory, per-method arrays) can grow here.
"""

from __future__ import annotations

import dataclasses
import math
import os

# the samples and input shape of each data set (file sets: n_train <= 0 means all of them)
INPUTS = {"peaks": (2,), "levelset": (2,), "swissroll": (2,), "ellipses": (2,),
          "digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32),
          "indian_pines": (200,)}
ALL_SAMPLES = {"digits": 1797, "mnist": 60000, "cifar10": 50000, "indian_pines": 10249}
CLASSES = 16            # at most (indian_pines); the classifier is a small term anyway
WARM_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}     # train.warm_dtype; same: dtype
# copies of the weights alive in training: weights, gradient, optimizer state
OPT_COPIES = {"sgd": 3, "adam": 4, "lbfgs": 2}
# the keys that make each term big (the one furthest above its default is named first)
KEYS = {"weights": ("model.layers", "model.width", "model.channels"),
        "states": ("data.n_train", "data.batch_size", "model.layers", "model.width",
                   "model.channels"),
        "warm start": ("data.n_train", "model.layers", "model.width", "model.channels"),
        "data": ("data.n_train", "data.n_val")}
OTHER = {"weights": "more ranks", "states": "more ranks",
         "warm start": "train.warm_start: false, or more ranks", "data": "a smaller set"}

def _samples(cfg) -> tuple[int, int]:
    d = cfg.data
    n = d.n_train if d.n_train > 0 else ALL_SAMPLES.get(d.name, 0)
    return n, max(d.n_val, 0)


def estimate_memory(cfg, ranks: int = 1) -> dict[str, int]:
    """Bytes one rank needs, per term: weights (with gradient and optimizer state), states
    (every point the rank owns, one batch), warm start (one-shot: forward and adjoint
    iterates at the rank's level-0 C-points for every sample, in ``train.warm_dtype``),
    data (the whole set, float64, on every rank). Shapes as the network builds them
    (:func:`mgrit_nn.model.init.shapes`, which allocates nothing)."""
    from mgrit_nn.config import at_level
    from mgrit_nn.model.init import shapes

    shape = INPUTS.get(cfg.data.name, (1,))
    shp = shapes(cfg.model, shape, CLASSES)
    itemsize = 4 if cfg.runtime.dtype == "float32" else 8
    state = math.prod(shp.state)
    per_layer = sum(math.prod(s) for s in shp.layer)
    ends = sum(math.prod(s) for s in (*shp.opening, *shp.classifier))
    layer_ranks = max(1, ranks // max(1, cfg.parallel.data_replicas))
    points = -(-(cfg.model.layers + 1) // layer_ranks)            # the rank's share of 0..N
    n_train, n_val = _samples(cfg)
    batch = cfg.data.batch_size or n_train
    copies = OPT_COPIES.get(cfg.train.optimizer, 4)
    warm = cfg.train.method == "oneshot" and cfg.train.warm_start
    c_points = -(-points // at_level(cfg.mgrit.cfactor, 0))
    warm_bytes = WARM_BYTES.get(getattr(cfg.train, "warm_dtype", "same"), itemsize)
    return {"weights": copies * itemsize * (points * per_layer + ends),
            "states": points * batch * state * itemsize,
            "warm start": 2 * c_points * n_train * state * warm_bytes if warm else 0,
            "data": (n_train + n_val) * (math.prod(shape) + 1) * 8}


def machine_memory() -> int:
    """Physical memory of this machine in bytes (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def ranks_here() -> int:
    """Ranks of the job on this node, from the launcher's environment (1 if it does not
    say: then only a run that cannot fit even alone is refused)."""
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def _applies(cfg, key: str) -> bool:
    """Whether the estimate depends on ``key`` (model.width of a conv network does not)."""
    from mgrit_nn.model.init import shapes

    section, name = key.split(".")
    if section == "data":
        return name != "batch_size" or cfg.data.batch_size > 0
    shape = INPUTS.get(cfg.data.name, (1,))
    bumped = dataclasses.replace(cfg.model, **{name: getattr(cfg.model, name) + 1})
    return name == "layers" or shapes(bumped, shape, CLASSES) != shapes(cfg.model, shape, CLASSES)


def _culprit(cfg, term: str) -> list[str]:
    """The term's keys that apply, the one furthest above its default first."""
    def growth(key: str) -> float:
        section, name = key.split(".")
        value, default = getattr(getattr(cfg, section), name), \
            getattr(type(getattr(cfg, section))(), name)
        return value / default if default and value > 0 else 0.0
    return sorted((k for k in KEYS[term] if _applies(cfg, k)), key=growth, reverse=True)


def memory_problem(cfg, ranks: int) -> tuple[str, str] | None:
    """(key, message) when the estimate for the ranks on this node exceeds its memory."""
    total = machine_memory()
    terms = estimate_memory(cfg, ranks)
    here = min(ranks, ranks_here())
    if not total or here * sum(terms.values()) <= total:
        return None
    big = max(terms, key=terms.get)
    keys = _culprit(cfg, big)
    ranks_said = f" x {here} ranks on this node" if here > 1 else ""
    return keys[0], (f"needs about {_size(sum(terms.values()))} of memory per rank{ranks_said}"
                     f" ({big} {_size(terms[big])}), more than this machine's {_size(total)}: "
                     f"lower {keys[0]} (or {', '.join(keys[1:])}; {OTHER[big]}) - an estimate, "
                     "see docs/troubleshooting.md, Memory")
