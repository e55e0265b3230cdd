"""A recorded schedule priced on a machine: the predicted time of one gradient.

The machine is four numbers (a ``machine`` YAML file or dict): ``kernel_s`` (fixed cost of
one tensor operation: launch / dispatch), ``element_s`` (cost per element an operation
writes), ``latency_s`` and ``bandwidth_Bps`` (a message of b bytes arrives latency + b /
bandwidth after it is posted). Every rank runs its events in order on its own clock: a
compute segment costs ``kernels * kernel_s + elements * element_s``; a receive waits for
the message's arrival; a reduction over the group waits for every rank and then costs
``ceil(log2 P)`` message latencies (a recursive-doubling allgather of a few bytes). The
predicted time is the latest clock; ``busy`` is each rank's compute, the rest waiting.

``fit`` calibrates ``kernel_s`` and ``element_s`` from measured compute segments (least
squares, both non-negative); the message numbers come from the bench's ping-pong.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import yaml

KEYS = ("kernel_s", "element_s", "latency_s", "bandwidth_Bps")


def _number(v) -> float | None:
    """A positive number; YAML 1.1 reads ``5.0e9`` (no exponent sign) as a string."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if x >= 0 and math.isfinite(x) else None


def load_machine(path: str | Path) -> dict:
    m = yaml.safe_load(Path(path).read_text())
    m = m if isinstance(m, dict) else {}
    bad = [k for k in KEYS if _number(m.get(k)) is None or (k == "bandwidth_Bps"
                                                             and _number(m[k]) == 0)]
    if bad:
        raise ValueError(f"needs a non-negative number for {', '.join(bad)} "
                         f"(bandwidth_Bps above 0)")
    return {k: _number(m[k]) for k in KEYS}


def compute_s(kernels: float, elements: float, m: dict) -> float:
    return kernels * m["kernel_s"] + elements * m["element_s"]


def replay(traces: list[list[tuple]], m: dict) -> dict:
    """Predicted seconds of the schedule ``traces`` (one event list per rank) on ``m``."""
    P = len(traces)
    clock, busy, pos = [0.0] * P, [0.0] * P, [0] * P
    arrivals: dict = defaultdict(deque)
    at_reduction = [False] * P
    hops = math.ceil(math.log2(P)) if P > 1 else 0
    while True:
        moved = False
        for r in range(P):
            ev = traces[r]
            while pos[r] < len(ev) and not at_reduction[r]:
                e = ev[pos[r]]
                if e[0] == "c":
                    dt = compute_s(e[1], e[2], m)
                    clock[r] += dt
                    busy[r] += dt
                elif e[0] == "s":
                    arrivals[(r, e[1], e[2])].append(
                        clock[r] + m["latency_s"] + e[3] / m["bandwidth_Bps"])
                elif e[0] == "r":
                    q = arrivals[(e[1], r, e[2])]
                    if not q:
                        break                       # the message is not sent yet
                    clock[r] = max(clock[r], q.popleft())
                else:                               # "a": wait for the whole group
                    at_reduction[r] = True
                    break
                pos[r] += 1
                moved = True
        if all(at_reduction):
            t = max(clock) + hops * m["latency_s"]
            clock = [t] * P
            at_reduction = [False] * P
            pos = [p + 1 for p in pos]
            continue
        if not moved:
            break
    if any(p < len(ev) for p, ev in zip(pos, traces, strict=True)):
        raise ValueError("the recorded schedule does not replay: a receive or a reduction "
                         "is never matched")
    return {"seconds": max(clock), "busy_s": busy, "ranks": P}


def fit(segments: list[tuple[int, int, float]]) -> dict:
    """kernel_s, element_s from (kernels, elements, seconds) of measured compute segments."""
    a = np.array([[k, e] for k, e, _ in segments], dtype=float)
    t = np.array([s for _, _, s in segments], dtype=float)
    best = None
    # non-negative least squares over the two coefficients: the free fit, else each alone
    for cols in ((0, 1), (0,), (1,)):
        x = np.zeros(2)
        sol, *_ = np.linalg.lstsq(a[:, cols], t, rcond=None)
        if (sol < 0).any():
            continue
        x[list(cols)] = sol
        err = float(np.sum((a @ x - t) ** 2))
        if best is None or err < best[1]:
            best = (x, err)
    x = best[0] if best else np.zeros(2)
    return {"kernel_s": float(x[0]), "element_s": float(x[1])}
