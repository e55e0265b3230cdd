"""Layer-parallel backpropagation: the adjoint MGRIT solve and the gradients (design §5).

The adjoint runs the same MGRIT core on the reversed grid ``tau = N - i`` with
the chain of ranks reversed, so every point stays on its forward owner. Its
step into tau-point ``I`` of level ``l`` is the vector-Jacobian product of the
coarse forward step from fine point ``i = N - I M_l`` (weights of layer ``i``,
spacing ``H_l``), linearized at the fine-grid primal state ``u_i``:

    lam_i = (dPhi/du (u_i; theta_i))^T lam_{i + M_l}

Parameter gradients are taken once, on level 0, after the last adjoint
iteration: ``grad theta_j = (dPhi/dtheta (u_j; theta_j))^T lam_{j+1}``.
"""

from __future__ import annotations

import torch

from mgrit_nn.config import MgritConfig
from mgrit_nn.mgrit import MGRIT, Chain, Index, Level, Selection, SolveResult, Warm
from mgrit_nn.mgrit.propagator import same_objects
from mgrit_nn.model.layers import LayerTable


class AdjointPropagator:
    """Transposed linearized steps of the network's scheme.

    ``prepare`` linearizes once per solve: for every level, one batched evaluation of the
    scheme's linearization ``D`` at the primal states of all local steps with that level's
    spacing (Euler: ``D = sigma'(K u + b)``, a step is then ``lam + H K^T (D * lam)``;
    Verlet: both half-steps' ``sigma'``). No autograd and no forward recomputation per step.
    """

    def __init__(self, net) -> None:
        self.net = net
        self.table: LayerTable | None = None
        self._cache: dict = {}
        self._dviews: dict = {}
        self.work = net.scratch
        self.D: list[torch.Tensor] = []      # per level, kept from solve to solve

    def prepare(self, levels: list[Level]) -> None:
        net = self.net
        if self.table is None or self.table.levels is not levels:
            N = net.cfg.layers
            self.table = LayerTable(net, levels, lambda lev, I: N - I * lev.stride)
            # primal state of the step into tau-point I: forward point N - I M_l (local; the
            # row of a slot without a step, 0, is the forward ghost)
            fwd = net.solver
            self.state_slot = [
                torch.tensor([0] + [fwd.slot(N - I * lev.stride) if I >= 1 else 0
                                    for I in lev.points()],
                             dtype=torch.long, device=net.device)
                for lev in levels]
            # a coarse step's linearization is level 0's at the same fine point and layer
            # where it does not depend on the spacing (Euler: sigma'(K u + b); Verlet: D1):
            # coarse levels read level 0's rows (level-0 slot of tau-point I M_l for the
            # level-l slot of I; the ghost slot, never a step's destination, reads row 0) and
            # hold only the part that depends on the spacing (Verlet: D2; Euler: none)
            self.d_rows = [None if l == 0 else
                           [0] + [levels[0].slot(I * lev.stride) for I in lev.points()]
                           for l, lev in enumerate(levels)]
        gen = self.table.generation
        self.table.refresh()
        if self.table.generation != gen:    # (a new table starts at 0): the per-selection
            self._cache, self._dviews = {}, {}    # weight views and level-0 rows are made anew
        primal = net.solver.states()            # forward points lo-1 .. hi
        old, chunk = self.D, net.solver.chunk
        self.D = [None] * len(levels)
        scheme, op = net.scheme, net.shapes.op
        for l, lev in enumerate(levels):
            if l > 0 and not scheme.coarse_linearization:      # reads level 0's D
                continue
            K, b = self.table.level_K[l], self.table.level_b[l]       # every slot's weights
            idx = self.state_slot[l]
            row = tuple(primal.shape[1:]) if l == 0 else \
                tuple(scheme.coarse_part(op, primal[:1]).shape[1:])
            shape = (len(idx),) + row
            # D is kept from solve to solve (same shape: overwritten in place, no allocation)
            D = old[l] if l < len(old) and old[l] is not None and old[l].shape == shape else \
                torch.empty(shape, dtype=primal.dtype, device=primal.device)
            fn = scheme.linearize if l == 0 else scheme.linearize_coarse
            for a in range(0, len(idx), chunk):    # the primal states gathered a chunk at a time,
                rows = slice(a, a + chunk)           # into a step's scratch (no step runs now)
                u = torch.index_select(primal, 0, idx[rows],
                                       out=self.work.get("b", len(idx[rows]), primal))
                into = D[rows]
                d = fn(op, net.act, u, K[rows], b[rows], net.h * lev.stride, out=into)
                if d.data_ptr() != into.data_ptr():             # conv: a new tensor
                    into.copy_(d)
            self.D[l] = D
        if not same_objects(old, self.D):
            self._dviews = {}               # views of the old D buffers go with them

    def capture_key(self) -> tuple:
        """The steps read the table's weights and the D buffers (replaced only when their
        shape changes)."""
        return (id(self.table), None if self.table is None else self.table.generation,
                tuple(id(D) for D in self.D))

    def step(self, level: int, sel: Selection, lam: torch.Tensor, out: torch.Tensor) -> None:
        regular = sel.slots.sl is not None   # views, kept; irregular slots: copies, anew
        got = self._cache.get(sel.key)
        if got is None:
            rows = self.d_rows[level]        # None: level 0, its D at the same slots
            fine = sel.slots if rows is None else \
                Index.of([rows[s] for s in sel.slots.t.tolist()], self.net.device)
            K = self.table.gather_hot(level, sel.slots)[0] if regular else None
            got = self._cache[sel.key] = (K, fine)
        K, fine = got
        if K is None:
            K = self.table.gather_hot(level, sel.slots)[0]
        net = self.net
        D = self._dviews.get(sel.key)
        if D is None:                       # views while the D buffers stay (prepare)
            D = fine.get(self.D[0])
            if level > 0:
                own = self.D[level]
                D = net.scheme.coarse_D(net.shapes.op, D,
                                        None if own is None else sel.slots.get(own))
            if regular and fine.sl is not None:
                self._dviews[sel.key] = D
        H = net.h * self.table.levels[level].stride
        net.scheme.adjoint(net.shapes.op, lam, D, K, H, out, self.work)


def adjoint_solver(net, opts: MgritConfig, graphs: str = "eager") -> MGRIT:
    chain = Chain.block(net.cfg.layers, net.msg.size, reverse=True)
    return MGRIT(chain, AdjointPropagator(net), net.msg, opts, net.device, net.dtype,
                 "MGRIT adjoint", net.scratch, graphs)


def solve_adjoint(net, lam_N: torch.Tensor | None, warm: Warm | None = None,
                  **kw) -> SolveResult:
    """Solve for lam_0..lam_N from ``lam_N`` (given on the last forward rank)."""
    shape = net.solver.shape
    with torch.no_grad():
        return net.adjoint.solve(lam_N, shape, warm=warm, **kw)


def layer_gradients(net) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of this rank's stacked layer weights from the final adjoint (one sweep).

    Layer j's gradient pairs the primal ``u_j`` with ``lam_{j+1}`` (adjoint slot hi - j)
    and the linearization ``D`` of the step from ``u_j``, which the adjoint solve already
    holds (level 0, adjoint slot hi - j + 1) for every layer j >= lo. The stacks are taken
    in adjoint (descending j) order, so only the primal states and the weights are reversed.
    Layer lo - 1 (the step from the ghost state, held here) is linearized on its own.
    The layers are taken in chunks of as many as a relaxation steps at once (level 0's
    intervals), so the sweep's temporaries stay a fraction of a level's states.
    """
    net.solver.refresh_ghost(0)       # collective with the neighbours: u_{lo-1} (layer lo-1)
    if net.jhi < net.jlo:             # a rank owning only point 0 holds no layer
        return torch.zeros_like(net.weight), torch.zeros_like(net.bias)
    op, scheme, lo, N = net.shapes.op, net.scheme, net.lo, net.cfg.layers
    K, b = net.weight.detach(), net.bias.detach()
    fwd, adj = net.solver, net.adjoint           # adjoint point of forward point i: N - i
    j0 = max(net.jlo, lo)
    ghost = []
    if net.jlo < j0:                 # layer lo - 1: u_{lo-1} (the ghost) with lam_lo
        ghost.append(scheme.param_grad(op, net.act, fwd.states(lo - 1, lo - 1),
                                       adj.states(N - lo, N - lo), K[0:1], b[0:1], net.h))
    chunk = fwd.chunk
    D0, chunks = adj.prop.D[0], []
    for top in range(net.jhi, j0 - 1, -chunk):   # layers top..bottom, descending
        bottom = max(j0, top - chunk + 1)
        rows = slice(bottom - net.jlo, top - net.jlo + 1)
        primal = fwd.states(bottom, top)       # reversed into a step's scratch (none runs)
        u = torch.ops.aten.flip.out(primal, [0], out=net.scratch.get("a", len(primal), primal))
        gK, gb = scheme.param_grad(op, net.act, u, adj.states(N - top - 1, N - bottom - 1),
                                   K[rows].flip(0), b[rows].flip(0), net.h,
                                   D=D0[adj.slots(N - top, N - bottom)], ws=net.scratch)
        chunks.append((gK.flip(0), gb.flip(0)))
    parts = ghost + chunks[::-1]                 # ascending layers
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
