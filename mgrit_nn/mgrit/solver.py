"""The MGRIT/FAS driver (design §4): storage, initial guess, iterations, residual.

One solver serves every propagator (forward, adjoint, any step scheme).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from mgrit_nn.comm import Messenger, Tag
from mgrit_nn.config import MgritConfig
from mgrit_nn.mgrit.capture import Recordings, iteration
from mgrit_nn.mgrit.cycle import CYCLES
from mgrit_nn.mgrit.hierarchy import Chain, Level, build_levels
from mgrit_nn.mgrit.propagator import Index, Propagator, Workspace, same_objects
from mgrit_nn.mgrit.relax import f_relax, members, sweep
from mgrit_nn.mgrit.restrict import c_slots, fine_residual
from mgrit_nn.runtime import CollectiveError
from mgrit_nn.schema import per_level

ROUNDING_FLOOR = 10.0   # the residual floor: ROUNDING_FLOOR x eps x the C-point states' norm

Warm = tuple[torch.Tensor, torch.Tensor]   # a warm start: (rows of u, their states)


class MGRITDivergence(CollectiveError):
    """NaN or Inf in an MGRIT residual (seen by every rank after the Allreduce)."""


class SolverStats:
    """Work and time of a solver: step applications (any level) and seconds per phase.

    ``steps / N`` is the work in fine-sweep equivalents (a replayed iteration counts the
    steps it recorded). Phase times are host times (on a GPU they include only what the
    host waited for; a replayed iteration is the phase ``replay``). ``replays``: iterations
    run from a recording (``runtime.graphs``).
    """

    def __init__(self) -> None:
        self.steps = 0
        self.replays = 0
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.steps, self.replays, self.seconds = 0, 0, {}

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class LevelData:
    u: torch.Tensor          # iterate, slots 0..n_local (slot 0 = ghost)
    g: torch.Tensor | None   # FAS right-hand side (levels > 0 only; zero on level 0)


@dataclass
class SolveResult:
    iters: int
    residuals: list[float] = field(default_factory=list)

    @property
    def conv_factor(self) -> float | None:
        """Geometric mean of the per-iteration factors ||r_k|| / ||r_{k-1}||."""
        r = self.residuals
        if len(r) < 2 or r[0] <= 0:
            return None
        if r[-1] <= 0:
            return 0.0
        return (r[-1] / r[0]) ** (1.0 / (len(r) - 1))


class MGRIT:
    """Distributed nonlinear MGRIT on a chain of ranks, for one propagator."""

    def __init__(self, chain: Chain, prop: Propagator, msg: Messenger, opts: MgritConfig,
                 device: torch.device, dtype: torch.dtype, name: str = "MGRIT",
                 scratch: Workspace | None = None, graphs: str = "eager") -> None:
        """``scratch``: where the coarse levels and the evaluation buffers live; solvers that
        never run at the same time (a network's forward and adjoint) pass the same one.
        ``graphs`` (``runtime.graphs``): ``cuda`` or ``emulate`` records each kind of
        iteration once and replays it (capture.py); only on a chain of one rank, whose
        iterations send no messages."""
        if graphs != "eager" and len(chain.ranks) > 1:
            raise ValueError(f"{name}: runtime.graphs needs every layer on one rank (the "
                             f"iterations of a chain of {len(chain.ranks)} ranks exchange "
                             "messages, which a graph cannot replay)")
        if graphs != "eager" and not hasattr(prop, "capture_key"):
            raise TypeError(f"{name}: runtime.graphs needs a propagator with capture_key() "
                            f"({type(prop).__name__} has none)")
        self.chain, self.prop, self.msg, self.opts = chain, prop, msg, opts
        self.device, self.dtype, self.name = device, dtype, name
        self.rank = msg.rank
        cfs = per_level(opts.cfactor, opts.levels)
        self.levels: list[Level] = build_levels(chain, self.rank, cfs, opts.levels,
                                                opts.min_coarse)
        self.relax = per_level(opts.relax, len(self.levels))
        self.data: list[LevelData] = []
        self.shape: tuple[int, ...] | None = None
        self.stats = SolverStats()
        self.work = Workspace() if scratch is None else scratch     # allocated once
        self.r0: torch.Tensor | None = None                # see cycle.py
        self._stores: tuple = ()                           # the levels' u and g (view())
        self._views: dict = {}
        self.scale = 0.0                # ||u_C|| of the last residual (the rounding floor)
        self.first = chain.ranks[0] == self.rank           # owns point 0
        self.last = chain.ranks[-1] == self.rank           # owns point N
        self.graphs = None if graphs == "eager" else graphs  # None: eager (also after a failure)
        self.recordings = Recordings()

    # -- storage ---------------------------------------------------------------------------
    def _allocate(self, shape: tuple[int, ...]) -> None:
        """Level 0 is the solver's own (the solution, read after the solve). The coarse
        levels hold nothing from one solve to the next (each cycle restricts to them anew,
        the initial guess zeroes g): they are scratch rows, taken again at every solve."""
        if self.shape != shape:
            self.shape = shape
            top = torch.zeros((self.levels[0].n_local + 1,) + shape, device=self.device,
                              dtype=self.dtype)
        else:
            top = self.data[0].u
        self.data = [LevelData(top, None)]            # level 0 needs no g; no level stores v
        for lev in self.levels[1:]:
            def rows(what: str, lev=lev) -> torch.Tensor:
                return self.work.rows(("level", lev.index, what), lev.n_local + 1, shape,
                                      self.dtype, self.device)
            self.data.append(LevelData(rows("u"), rows("g")))
        stores = tuple(t for d in self.data for t in (d.u, d.g) if t is not None)
        if not same_objects(stores, self._stores):
            self._stores, self._views = stores, {}    # new storage: the old views go

    def view(self, idx: Index, x: torch.Tensor) -> torch.Tensor:
        """``idx.get(x)`` for a level's storage ``x``; a view (regular slots) is made once
        and kept while the storage stays (``_allocate`` drops them with it), so a sweep
        slices nothing per step. Irregular slots give a gathered copy, never kept."""
        if idx.sl is None:
            return idx.get(x)
        key = (id(idx), id(x))            # the entry holds both: neither id can be reused
        got = self._views.get(key)
        if got is None:
            got = self._views[key] = (idx, x, x[idx.sl])
        return got[2]

    @property
    def chunk(self) -> int:
        """Rows a relaxation steps at once on level 0 (about its interval count): sweeps
        over every level-0 point outside the solver (the adjoint's linearization, the layer
        gradients) go in chunks of this size, so their temporaries stay a fraction of a
        level's states, like the relaxation's own."""
        lev = self.levels[0]
        return max(1, lev.n_local // lev.cfactor)

    @property
    def u(self) -> torch.Tensor:
        """This rank's level-0 states (points lo..hi), a view of the solver's storage."""
        return self.data[0].u[1:]

    def warm_rows(self) -> tuple[torch.Tensor, list[int]]:
        """The rows of :attr:`u` a warm start reads, and their points: this rank's level-0
        C-points >= 1. Every solve begins with an F-relaxation of level 0 (each scheme
        starts with one; on a single level, a sweep from ``u0``), which recomputes each
        F-point from the C-point before it, the left neighbour's last point arriving once
        final, before any F-point is read: a warm start's F-points are never read."""
        lev = self.levels[0]
        points = [i for i in lev.points() if i >= 1 and lev.is_c(i)]
        rows = torch.tensor([lev.slot(i) - 1 for i in points], dtype=torch.long,
                            device=self.device)
        return rows, points

    # -- states by point: what an application reads (no slot arithmetic outside mgrit/) ------
    def slot(self, point: int) -> int:
        """The level-0 storage row of this rank's point (``lo - 1``: the ghost, the left
        neighbour's last point, valid after a solve or refresh_ghost)."""
        lev = self.levels[0]
        assert lev.lo - 1 <= point <= lev.hi, (point, lev.lo, lev.hi)
        return lev.slot(point)

    def slots(self, first: int, last: int) -> slice:
        """The level-0 storage rows of this rank's points ``first..last``."""
        return slice(self.slot(first), self.slot(last) + 1)

    def states(self, first: int | None = None, last: int | None = None) -> torch.Tensor:
        """Level-0 states at points ``first..last`` (default: the ghost ``lo - 1`` through
        ``hi``), a view of the solver's storage."""
        lev = self.levels[0]
        return self.data[0].u[self.slots(lev.lo - 1 if first is None else first,
                                          lev.hi if last is None else last)]

    def ghost(self) -> torch.Tensor:
        """The state at point ``lo - 1`` (the left neighbour's last point)."""
        return self.data[0].u[0]

    # -- initial guess ---------------------------------------------------------------------
    def _initial_guess(self, u0: torch.Tensor | None, shape, init: str,
                       warm: Warm | None) -> None:
        for d in self.data[1:]:
            d.g.zero_()
        top = self.data[0].u
        if warm is not None:                   # (rows of warm_rows, their states)
            rows, values = warm
            top.zero_()
            top[1:].index_copy_(0, rows, values)
        elif init == "copy":
            buf = u0.clone() if self.first else torch.empty(shape, device=self.device,
                                                             dtype=self.dtype)
            self.msg.bcast_tensor(buf, root=self.chain.ranks[0])
            top.copy_(buf.expand_as(top))
        else:
            top.zero_()
        if self.first:
            top[1].copy_(u0)
        if warm is None and init == "coarse":
            self._coarse_guess(u0)

    def _coarse_guess(self, u0: torch.Tensor) -> None:
        """Serial solve on the coarsest level, then injection + F-relax down to level 0."""
        L = len(self.levels) - 1
        if L == 0:
            sweep(self, 0, "all")
            return
        self.data[L].u.zero_()
        if self.first:
            self.data[L].u[1].copy_(u0)
        sweep(self, L, "all")
        for l in range(L - 1, -1, -1):
            fine_c, coarse_c = c_slots(self, l)
            fine_c.put(self.data[l].u, coarse_c.get(self.data[l + 1].u))
            f_relax(self, l)

    def _start(self, shape: tuple[int, ...]) -> None:
        """Storage for states of this shape, and the propagator's data for this solve."""
        self._allocate(tuple(shape))
        with self.stats.phase("prepare"):
            self.prop.prepare(self.levels)

    def propagate(self, u0: torch.Tensor | None, shape: tuple[int, ...]) -> None:
        """Plain sequential time stepping on level 0, passed rank to rank (exact, no iteration)."""
        self._start(shape)
        if self.first:
            self.data[0].u[1].copy_(u0)
        sweep(self, 0, "all")

    def refresh_ghost(self, l: int = 0) -> None:
        """Make slot 0 of level l hold the left neighbour's current last value."""
        lev, d = self.levels[l], self.data[l]
        if lev.n_local == 0:
            return
        recv = self.msg.irecv(d.u[0], lev.left, Tag.GHOST) if lev.left is not None else None
        send = self.msg.isend(d.u[lev.n_local], lev.right, Tag.GHOST) \
            if lev.right is not None else None
        if recv is not None:
            recv.wait()
        if send is not None:
            send.wait()

    # -- the iteration ---------------------------------------------------------------------
    def _residual_sums(self) -> torch.Tensor | None:
        """This rank's sums of squares of the residual at its level-0 C-points c >= 1,
        ``Phi(u_{c-1}) - u_c``, and of those states, on the device (None: no C-points here);
        keeps the fine residual for the next restriction (:attr:`r0`)."""
        r = fine_residual(self, 0)                         # g = 0 on level 0
        self.r0 = r
        if not len(r):
            return None
        u_c = members(self, 0, "C").get(self.data[0].u)
        if not u_c.is_contiguous():        # a strided view, gathered for the dot product
            u_c = self._gathered(u_c)
        u_c, rf = u_c.flatten(), r.flatten()
        return torch.stack([torch.dot(rf, rf), torch.dot(u_c, u_c)])

    def _gathered(self, u_c: torch.Tensor) -> torch.Tensor:
        """A contiguous copy of level 0's C-points without new memory: in level 1's iterate,
        which the cycle has spent (the correction is formed in it) and the next restriction
        writes anew; it has a row for each of them. One level: scratch rows of its own."""
        if len(self.data) > 1:
            return self.data[1].u[:len(u_c)].copy_(u_c)
        return self.work.get("u_c", len(u_c), u_c).copy_(u_c)

    def _reduce(self, sums: torch.Tensor | None) -> float:
        """The residual norm over all ranks from their :meth:`_residual_sums`: one reduction,
        the same bits on every rank, so every rank takes the same stopping decision. The
        same reduction gives the norm of those states, :attr:`scale` (the rounding floor)."""
        local = [0.0, 0.0] if sums is None else sums.tolist()     # one device sync for both
        r2, u2 = self.msg.allreduce_sums(local)
        self.scale = math.sqrt(u2)
        return math.sqrt(r2)

    def reachable(self, tol: float) -> float:
        """``tol``, raised to the rounding floor ``ROUNDING_FLOOR eps ||u_C||`` where that is
        larger: a residual cannot go below the rounding of the states it compares (in float32
        an absolute 1e-10 is out of reach, and an exact solve would run to ``max_iter``).
        ``tol = 0`` stays 0: a fixed count of ``max_iter`` iterations, as asked."""
        if tol == 0:
            return 0.0
        return max(tol, ROUNDING_FLOOR * torch.finfo(self.dtype).eps * self.scale)

    def solve(self, u0: torch.Tensor | None, shape: tuple[int, ...],
              warm: Warm | None = None,
              max_iter: int | None = None,
              tol: float | None = None) -> SolveResult:
        """Solve from the initial state ``u0`` (given on the first chain rank).

        ``warm``: ``(rows, states)``, this rank's level-0 states at :meth:`warm_rows` from
        an earlier solve (warm start); otherwise the configured initial guess. Returns
        iterations and residuals; the solution is in :attr:`u`.
        """
        max_iter = self.opts.max_iter if max_iter is None else max_iter
        tol = self.opts.tol if tol is None else tol
        self._start(shape)
        with self.stats.phase("init"):
            self._initial_guess(u0, tuple(shape), self.opts.init, warm)
        cycle = CYCLES[self.opts.cycle]
        self.r0 = None                  # level-0 residual of the current iterate, if known
        result = SolveResult(0)
        for k in range(1, max_iter + 1):
            sums = iteration(self, cycle, skip=k == 1 and warm is None and self.opts.skip)
            with self.stats.phase("residual"):
                r = self._reduce(sums)
            result.iters, result.residuals = k, result.residuals + [r]
            if not math.isfinite(r):
                raise MGRITDivergence(
                    f"{self.name}: residual is {r} at iteration {k} "
                    f"(level 0 of {len(self.levels)}); the step may be unstable for "
                    f"this spacing: try a smaller model.T, more layers or fewer levels")
            if r <= self.reachable(tol):
                break
        return result

    def iterate(self, cycle, skip: bool) -> torch.Tensor | None:
        """One iteration on the device: a cycle, which ends with correction + F-relax on
        level 0 (or an exact solve), then the residual's sums (:meth:`_residual_sums`)."""
        cycle(self, 0, skip=skip)
        with self.stats.phase("residual"):
            return self._residual_sums()

    def memory_key(self) -> tuple:
        """Changes when memory an iteration reads is replaced, not overwritten: the levels'
        storage, the scratch, the propagator's step data (a recording of it is then stale)."""
        return (tuple(id(t) for t in self._stores), self.work.generation,
                self.prop.capture_key())
