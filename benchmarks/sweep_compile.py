"""Does capturing a whole relaxation sweep with ``torch.compile`` pay on this machine?

    python benchmarks/sweep_compile.py [--batches 4,32,1000] [--layers 1024] [--width 8]
        [--cfactor 4] [--repeats 200] [--dtype float32]

One level-0 F-relaxation of a dense Euler network, as the solver runs it: ``cfactor - 1``
sequential steps, each one batched step of all intervals (``layers / cfactor`` stacked
(B x W)(W x W) products, the activation and the update, written into strided views of the
level's storage). Timed two ways in one process, alternating block by block:

- eager: the hot path's own step (``EulerScheme.step_`` with the CPU's in-place tanh and a
  workspace: no allocation), one call per position of the run;
- compiled: the same sweep as one ``torch.compile``d function (static shapes; inductor
  fuses bias, activation and update and calls the product as an extern kernel), with
  torch's tanh and with tanh as 2 sigmoid(2z) - 1 (the eager CPU path's form).

Prints the compile time, the microseconds per sweep of each (median of ``--repeats``) and
their ratio, and the largest difference of the results. One thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mgrit_nn.mgrit.propagator import Workspace
from mgrit_nn.model.operators import OPERATORS
from mgrit_nn.model.steps import ACTIVATIONS, SCHEMES, Activation, tanh_via_sigmoid


def sweeps(N: int, m: int, W: int, B: int, dtype):
    op, act, scheme = OPERATORS["dense"], ACTIVATIONS["tanh"], SCHEMES["euler"]
    n = N // m
    gen = torch.Generator().manual_seed(0)
    u = torch.randn((N + 1, B, W), generator=gen, dtype=dtype)
    K = torch.randn((N, W, W), generator=gen, dtype=dtype) * 0.3
    Kt = K.transpose(1, 2).contiguous()
    b = torch.randn((N, W), generator=gen, dtype=dtype)
    h, ws = 1.0 / N, Workspace()
    hot = [op.hot_weights(K[j - 1:N:m][:n], Kt[j - 1:N:m][:n]) for j in range(1, m)]
    plain = [(K[j - 1:N:m][:n], b[j - 1:N:m][:n]) for j in range(1, m)]

    def eager(u):
        for j in range(1, m):
            scheme.step_(op, act, u[j - 1:N:m][:n], hot[j - 1], plain[j - 1][1], h,
                         u[j:N:m][:n], ws)

    def functional(act):
        def sweep(u):
            for j in range(1, m):
                Kj, bj = plain[j - 1]
                u[j:N:m][:n].copy_(scheme.step(op, act, u[j - 1:N:m][:n], Kj, bj, h))
        return torch.compile(sweep, dynamic=False)
    sigmoid = Activation(tanh_via_sigmoid, None, None)
    return u, eager, functional(act), functional(sigmoid)


def median_us(fn, u, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(u)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="4,32,1000")
    p.add_argument("--layers", type=int, default=1024)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--cfactor", type=int, default=4)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    a = p.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, a.dtype)
    print("| batch | compile [s] | eager [us] | compiled, tanh [us] | compiled, sigmoid form "
          "[us] | compiled / eager | largest difference |")
    print("|---|---|---|---|---|---|---|")
    for B in (int(v) for v in a.batches.split(",")):
        u, eager, *compiled = sweeps(a.layers, a.cfactor, a.width, B, dtype)
        t0 = time.perf_counter()
        for fn in compiled:
            fn(u.clone())
        compile_s = time.perf_counter() - t0
        times = [[] for _ in range(3)]
        for _ in range(5):                     # alternating blocks
            for t, fn in zip(times, [eager, *compiled], strict=True):
                t.append(median_us(fn, u, a.repeats // 5))
        te, *tc = (statistics.median(t) for t in times)
        ref = u.clone()
        eager(ref)
        diff = 0.0
        for fn in compiled:
            got = u.clone()
            fn(got)
            diff = max(diff, float((ref - got).abs().max()))
        print(f"| {B} | {compile_s:.1f} | {te:.0f} | {tc[0]:.0f} | {tc[1]:.0f} | "
              f"{tc[0] / te:.2f} / {tc[1] / te:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
