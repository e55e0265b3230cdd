"""Relaxation (design §4): F-sweeps, C-updates, and the two primitives behind them.

``sweep`` updates a point set in increasing order, sequentially inside each
run of consecutive points, all runs of a rank at once as one batched step per
position in the run. ``evaluate`` applies the step at a point set from the
current values in one batched step (C-relaxation, restriction and residual).

Only the run that starts at a rank's first point depends on the left
neighbour: the rank posts that receive first, sends its own last value as
soon as it is final, and relaxes everything else before it waits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mgrit_nn.comm import LEVEL_STRIDE, Tag
from mgrit_nn.mgrit.hierarchy import Level
from mgrit_nn.mgrit.propagator import Index, Selection


def is_member(lev: Level, i: int, kind: str) -> bool:
    """Point sets: F-points, C-points (both without point 0) and all points >= 1."""
    if i < 1 or i >= lev.n:
        return False
    if kind == "F":
        return not lev.is_c(i)
    if kind == "C":
        return lev.is_c(i)
    return True


@dataclass
class Plan:
    """What one rank does in a sweep/evaluation of one point set on one level."""

    interior: list[Selection]   # batched, independent of the left neighbour
    leading: list[Selection]    # after the ghost arrives, in order
    recv_ghost: bool            # point lo is a member: its predecessor lives on the left
    send_last: str | None       # when u[hi] goes right: "early" | "interior" | "leading"
    slots: Index                # all member slots in increasing order (for evaluate)
    rows: dict                  # selection key -> its rows of an evaluation's output


def _runs(lev: Level, kind: str) -> list[list[int]]:
    runs: list[list[int]] = []
    prev = None
    for i in lev.points():
        if is_member(lev, i, kind):
            if prev == i - 1 and runs:
                runs[-1].append(i)
            else:
                runs.append([i])
            prev = i
    return runs


def plan(lev: Level, kind: str, device: torch.device, sequential: bool) -> Plan:
    """Build (once per level, point set and mode) the batched index sets.

    For an evaluation (not sequential) the members are the leading point (slot 1, if
    it is one) followed by one interior selection, so results fill an output buffer
    in increasing slot order without sorting.
    """
    key = (kind, sequential)
    if key in lev.plans:
        return lev.plans[key]
    runs = _runs(lev, kind)
    if not sequential:   # evaluate: every member is its own run
        runs = [[i] for r in runs for i in r]
    recv_ghost = lev.n_local > 0 and is_member(lev, lev.lo, kind)
    lead = runs.pop(0) if recv_ghost else []
    longest = max((len(r) for r in runs), default=0)
    tag = (lev.index, kind, sequential)
    interior = []
    for k in range(longest):
        slots = [lev.slot(r[k]) for r in runs if len(r) > k]
        interior.append(Selection(Index.of(slots, device), tag + ("i", k)))
    leading = [Selection(Index.of([lev.slot(i)], device), tag + ("l", k))
               for k, i in enumerate(lead)]
    send_last = None
    if lev.right is not None and is_member(lev, lev.hi + 1, kind):
        if not sequential or not is_member(lev, lev.hi, kind):
            send_last = "early"
        elif lead and lead[-1] == lev.hi:
            send_last = "leading"
        else:
            send_last = "interior"
    members = sorted(lev.slot(i) for r in runs + [lead] for i in r)
    rows, at = {}, 0
    for sel in leading + interior:        # the leading point (slot 1) first, then slot order
        rows[sel.key] = slice(at, at + len(sel.slots))
        at += len(sel.slots)
    p = Plan(interior, leading, recv_ghost, send_last, Index.of(members, device), rows)
    lev.plans[key] = p
    return p


def _phi(solver, l: int, sel: Selection, with_g: bool, out: torch.Tensor) -> None:
    """Phi~ into ``out`` for the selected slots, from their predecessors' current values."""
    d = solver.data[l]
    solver.stats.steps += len(sel.slots)
    solver.prop.step(l, sel, solver.view(sel.prev, d.u), out)
    if with_g and l > 0:
        out.add_(solver.view(sel.slots, d.g))


def _apply(solver, l: int, sel: Selection, with_g: bool, out: torch.Tensor | None) -> None:
    """Sequential (``out`` None): straight into the storage; else into the given rows."""
    if out is not None:
        _phi(solver, l, sel, with_g, out)
        return
    u = solver.data[l].u
    if sel.slots.sl is not None:
        _phi(solver, l, sel, with_g, solver.view(sel.slots, u))
    else:
        buf = solver.work.get("sweep", len(sel.slots), u)
        _phi(solver, l, sel, with_g, buf)
        sel.slots.put(u, buf)


def _run(solver, l: int, kind: str, sequential: bool, with_g: bool, tag: int,
         out: torch.Tensor | None = None) -> Plan:
    lev, d, msg = solver.levels[l], solver.data[l], solver.msg
    p = plan(lev, kind, solver.device, sequential)
    if lev.n_local == 0:
        return p

    def target(sel: Selection) -> torch.Tensor | None:
        return None if out is None else out[p.rows[sel.key]]

    recv = msg.irecv(d.u[0], lev.left, tag) if p.recv_ghost else None
    sends = []
    if p.send_last == "early":
        sends.append(msg.isend(d.u[lev.n_local], lev.right, tag))
    for sel in p.interior:
        _apply(solver, l, sel, with_g, target(sel))
    if p.send_last == "interior":
        sends.append(msg.isend(d.u[lev.n_local], lev.right, tag))
    if recv is not None:
        recv.wait()
        for sel in p.leading:
            _apply(solver, l, sel, with_g, target(sel))
    if p.send_last == "leading":
        sends.append(msg.isend(d.u[lev.n_local], lev.right, tag))
    for s in sends:
        s.wait()
    return p


def sweep(solver, l: int, kind: str) -> None:
    """``u_i = Phi~_i(u_{i-1})`` over the point set, in order (F-relax, coarse solve)."""
    _run(solver, l, kind, sequential=True, with_g=True, tag=Tag.SWEEP + LEVEL_STRIDE * l)


def members(solver, l: int, kind: str) -> Index:
    """The slots (increasing) an evaluation of this point set writes, in its row order."""
    return plan(solver.levels[l], kind, solver.device, False).slots


def evaluate(solver, l: int, kind: str, with_g: bool,
             into: torch.Tensor | None = None) -> tuple[Index, torch.Tensor]:
    """Member slots (increasing) and ``Phi~`` there from the current values.

    The values are rows of a workspace buffer (one per level and point set), valid
    until the next evaluation of the same level and point set; or, given ``into``
    (one row per member), written there.
    """
    d = solver.data[l]
    p = plan(solver.levels[l], kind, solver.device, False)
    out = solver.work.get(("eval", l, kind), len(p.slots), d.u) if into is None else into
    _run(solver, l, kind, sequential=False, with_g=with_g, tag=Tag.EVAL + LEVEL_STRIDE * l, out=out)
    return p.slots, out


def f_relax(solver, l: int) -> None:
    sweep(solver, l, "F")


def c_relax(solver, l: int) -> None:
    slots, values = evaluate(solver, l, "C", with_g=True)
    slots.put(solver.data[l].u, values)


def relax(solver, l: int, scheme: str, first_f: bool = True) -> None:
    """``F``, ``FCF`` or ``FCFCF``: one F-relaxation, then C+F pairs. ``first_f=False``
    leaves out the first F-relaxation when the iterate is already F-relaxed (F-relaxation
    is idempotent: it would recompute the same values)."""
    if first_f:
        f_relax(solver, l)
    for _ in range(scheme.count("C")):
        c_relax(solver, l)
        f_relax(solver, l)
