"""The memory pre-flight: estimate each rank's peak memory from the config, refuse what
cannot fit before any work.

``estimate_memory(cfg, ranks)`` adds up, for the most loaded rank and from the config alone
(no data loaded, no tensor allocated), the terms of what the run holds at its peak:

- ``libraries``: Python, torch, MPI and h5py with their buffers (measured here: a tiny run's
  peak RSS; on a GPU the CUDA context comes on top, in GPU memory);
- ``weights``: the rank's layers in every copy alive: weight, gradient, optimizer state,
  and for the MGRIT methods each solver's weight table and the per-selection gathered rows;
- ``states``: the network states of one batch, by method: for MGRIT about 5 level-0 state
  sets (:func:`mgrit_state_sets`: both solvers' level-0 iterates, the coarse levels and
  scratch they share, the adjoint's linearization); or, for the methods that run autograd
  over their layers (serial, penalty/al, parpas, local_critic), the tensors autograd saves
  per layer;
- ``warm start``: the one-shot stores (level-0 C-points only, in ``train.warm_dtype``; not
  counted when ``train.warm_store: mmap`` keeps them in a file-backed mapping);
- ``method``: a method's own per-sample arrays (penalty/al lambda and kappa, parpas'
  inputs);
- ``data``: the whole data set, float64, on every rank (and its copy in ``runtime.dtype``).

The level sizes come from the same functions that build the hierarchy
(:func:`~mgrit_nn.mgrit.hierarchy.build_levels`); the counts of state sets from the code
(see each constant). ``benchmarks/memory_table.py`` compares the estimate with the
measured peak RSS. :func:`memory_problem` refuses a run whose ranks on this node need more
than the node's memory (or, on a GPU, the device's), with one message naming the biggest
term and the keys to change.
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
# the MGRIT methods' extra weight copies: per solver (forward, adjoint) the weight table of
# every level (own and fetched rows) and, dense, its transpose (selections take views of
# them; only irregular slot sets, none in the block layout, would gather copies)
SOLVER_WEIGHT_COPIES = 4
LIBRARIES = 340 * 2**20       # a tiny 1-rank run's peak RSS here (torch 2.13 CPU, MPICH)
# Per network kind (the Operator's ``unfold`` and ``autograd_sets``): the state sets a
# batched step's linear map unfolds its input into (conv 3x3: 9, on the largest selection
# the MGRIT sweeps step at once, level 0's F-points), and the sets autograd keeps per layer,
# measured as the peak RSS per sample of two batch sizes: dense 4.0, conv 12.4.
MGRIT_METHODS = ("mgrit", "oneshot", "clipped")
# the keys that make each term big (the one furthest above its default is named first)
KEYS = {"weights": ("model.layers", "model.width", "model.channels"),
        "states": ("data.batch_size", "model.layers", "model.width", "model.channels",
                   "data.n_train"),
        "warm start": ("data.n_train", "model.layers", "model.width", "model.channels"),
        "method": ("data.n_train", "model.width", "model.channels"),
        "data": ("data.n_train", "data.n_val"),
        "evaluation": ("data.n_train", "model.layers", "model.width", "model.channels"),
        "libraries": ()}
OTHER = {"weights": "more ranks", "states": "more ranks", "method": "more ranks",
         "warm start": "train.warm_store: mmap, train.warm_dtype: bfloat16, or more ranks",
         "data": "a smaller set",
         "evaluation": "more ranks",
         "libraries": "a machine with more memory"}


def _samples(cfg) -> tuple[int, int]:
    d = cfg.data
    n = d.n_train if d.n_train > 0 else ALL_SAMPLES.get(d.name, 0)
    return n, max(d.n_val, 0)


def _level_points(cfg, layer_ranks: int) -> list[int]:
    """Points per level on the most loaded rank (rank 0 of the block distribution)."""
    from mgrit_nn.mgrit.hierarchy import Chain, build_levels

    m = cfg.mgrit
    levels = build_levels(Chain.block(cfg.model.layers, layer_ranks), 0, m.cfactor
                          if isinstance(m.cfactor, list) else [m.cfactor], m.levels,
                          m.min_coarse)
    return [lev.n_local for lev in levels]


def _operator(cfg):
    from mgrit_nn.model.init import shapes

    return shapes(cfg.model, INPUTS.get(cfg.data.name, (1,)), CLASSES).op


def mgrit_state_sets(cfg, layer_ranks: int) -> float:
    """State sets of one batch the forward and adjoint MGRIT solvers hold on the rank (the
    code's structure, issue 16; ``mgrit-nn bench`` measures them as ``*_state_sets``): each
    solver's level-0 iterate; the coarse levels' u and g, once for both solvers (they never
    run at the same time); the adjoint's linearization D on level 0 (Euler's coarse levels
    read it; Verlet's read D1 and hold their own D2, which depends on the spacing); a step's
    two scratch row sets (the F-points stepped together, level 0's interval count), also the
    chunks of the linearization and of the layer-gradient sweep; the C-point evaluations of
    every level; a convolution's unfolded input."""
    from mgrit_nn.model.steps import SCHEMES
    from mgrit_nn.schema import at_level

    n = _level_points(cfg, layer_ranks)
    coarse = sum(k + 1 for k in n[1:])
    rows = n[0] / at_level(cfg.mgrit.cfactor, 0)            # a relaxation's selection
    evals = sum(k / at_level(cfg.mgrit.cfactor, lv) for lv, k in enumerate(n))
    linearization = (n[0] + 1) + coarse * SCHEMES[cfg.model.step].coarse_linearization
    unfold = _operator(cfg).unfold * rows
    return 2 * (n[0] + 1) + 2 * coarse + linearization + 2 * rows + evals + unfold


def estimate_memory(cfg, ranks: int = 1) -> dict[str, int]:
    """Bytes the most loaded rank needs at its peak, per term (module docstring). Shapes as
    the network builds them (:func:`mgrit_nn.model.init.shapes`, which allocates nothing)."""
    from mgrit_nn.model.init import shapes
    from mgrit_nn.schema import at_level

    shape = INPUTS.get(cfg.data.name, (1,))
    shp = shapes(cfg.model, shape, CLASSES)
    itemsize = 4 if cfg.runtime.dtype == "float32" else 8
    state = math.prod(shp.state)
    per_layer = sum(math.prod(s) for s in shp.layer)
    ends = sum(math.prod(s) for s in (*shp.opening, *shp.classifier))
    D = max(1, cfg.parallel.data_replicas)
    layer_ranks = max(1, ranks // D)
    points = -(-(cfg.model.layers + 1) // layer_ranks)            # the rank's share of 0..N
    n_train, n_val = _samples(cfg)
    batch = -(-(cfg.data.batch_size or n_train) // D)             # this replica's share
    method = cfg.train.method
    copies = OPT_COPIES.get(cfg.train.optimizer, 4) + \
        (SOLVER_WEIGHT_COPIES if method in MGRIT_METHODS else 0)
    one_set = batch * state * itemsize                            # one state per sample
    mgrit = method in MGRIT_METHODS
    sets = mgrit_state_sets(cfg, layer_ranks) if mgrit \
        else shp.op.autograd_sets * points
    # the exact forward pass over the whole training set (evaluation, penalty's honest loss)
    # keeps the rank's states, after a step's own are freed: only what exceeds them counts;
    # an MGRIT solver reuses its storage when the shapes agree
    whole = 0 if mgrit and batch == n_train else (points + 1) * n_train * state * itemsize
    whole = max(0, whole - int(sets * one_set))
    # a memory-mapped store is file-backed: the kernel pages it out, it cannot exhaust RAM
    warm = method == "oneshot" and cfg.train.warm_start and cfg.train.warm_store != "mmap"
    c_points = -(-points // at_level(cfg.mgrit.cfactor, 0))
    warm_bytes = WARM_BYTES.get(cfg.train.warm_dtype, itemsize)
    per_sample = {"penalty": 1, "al": 2, "parpas": 1}.get(method, 0)   # lambda (kappa), inputs
    if method in ("penalty", "al") and cfg.penalty.store == "mmap":
        per_sample = 0
    data = (n_train + n_val) * (math.prod(shape) + 1) * (8 + (itemsize if itemsize != 8 else 0))
    return {"libraries": LIBRARIES,
            "weights": copies * itemsize * (points * per_layer + ends),
            "states": int(sets * one_set),
            "evaluation": whole,
            "warm start": 2 * c_points * n_train * state * warm_bytes if warm else 0,
            "method": per_sample * n_train * state * itemsize if layer_ranks > 1 else 0,
            "data": data}


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


ON_DEVICE = ("weights", "states", "warm start", "method", "data")   # runtime.device: cuda


def gpu_memory() -> int:
    """Memory of this node's first GPU in bytes (0: none visible)."""
    import torch

    try:
        return torch.cuda.get_device_properties(0).total_memory \
            if torch.cuda.is_available() else 0
    except RuntimeError:
        return 0


def memory_problem(cfg, ranks: int) -> tuple[str, str] | None:
    """(key, message) when the estimate for the ranks on this node exceeds its memory (on
    ``runtime.device: cuda``, also when a rank's device terms exceed one GPU's)."""
    terms = estimate_memory(cfg, ranks)
    here = min(ranks, ranks_here())
    checks = [(machine_memory(), here * sum(terms.values()), terms, "this machine's",
               f" x {here} ranks on this node" if here > 1 else "")]
    if cfg.runtime.device == "cuda":
        on_gpu = {k: terms[k] for k in ON_DEVICE}
        checks.append((gpu_memory(), sum(on_gpu.values()), on_gpu, "one GPU's", ""))
    for total, need, part, where, ranks_said in checks:
        if not total or need <= total:
            continue
        big = max(part, key=part.get)
        keys = _culprit(cfg, big) or ["data.batch_size"]
        return keys[0], (f"needs about {_size(sum(part.values()))} of memory per rank"
                         f"{ranks_said} ({big} {_size(part[big])}), more than {where} "
                         f"{_size(total)}: lower {keys[0]} (or {', '.join(keys[1:])}; "
                         f"{OTHER[big]}) - an estimate, see docs/troubleshooting.md, Memory")
    return None


def memory_line(cfg, ranks: int) -> str:
    """The estimate as one log line: total and its terms."""
    terms = estimate_memory(cfg, ranks)
    parts = ", ".join(f"{k} {_size(v)}" for k, v in terms.items() if v)
    return f"memory estimate per rank: {_size(sum(terms.values()))} ({parts})"
