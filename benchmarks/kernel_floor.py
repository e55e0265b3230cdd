"""Where a small-batch gradient's time goes: the ATen operations alone, against the whole call.

    python benchmarks/kernel_floor.py CONFIG [--set k=v ...] [--repeats 20]

Runs one one-shot gradient and one serial-autograd gradient of the config's bench batch (one
rank), records every ATen operation each dispatches (``mgrit_nn.opcount.record``), and
times, in this one process:

- ``call_s``: the gradient as ``mgrit-nn bench`` times it (median of the repeats);
- ``replay_s``: the recorded operations called again back to back from one Python loop, on
  copies of their inputs (the same shapes and strides): the operations' own cost, kernel and
  ATen dispatch, without the Python that issued them (ours, or autograd's engine);
- per operation name, its calls replayed alone (``by_op_s``: seconds, calls), largest first;
- ``dispatch_s``: the operation count times the replay of a no-op (``aten.alias`` of a
  one-element tensor), the part of ``replay_s`` that is calling ATen from Python at all.

With ``--products W``, it first prints the cost of one batched step's product alone
(``torch.baddbmm`` of 256 stacked (B x W)(W x W) products, the step of a level-0 relaxation
at N = 1024) for B = 1 .. 16, 32, 64, 256, 1000: ATen's CPU kernel runs products of fewer
than 400 multiply-adds (B W^2 < 400) in a scalar loop, larger ones through MKL; next to it
the same products in the feature-major layout, (W x W)(W x B), and the step's tanh, torch's
and the steps' CPU form (2 sigmoid(2z) - 1, in place).

``call_s - replay_s`` is what the issuing code adds; ``replay_s - dispatch_s`` approximates
the kernels' own time. If the kernels dominate, only fewer or cheaper operations make the
gradient faster; if the issuing and the dispatch do, capturing the sequence (compile, CUDA
graphs) pays. Prints one JSON object per method.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

from mgrit_nn.commands.bench import _median_time, bench_batch, serial_gradient
from mgrit_nn.methods.base import Batch
from mgrit_nn.methods.layer_parallel import LayerParallelMethod
from mgrit_nn.model.steps import ACTIVATIONS
from mgrit_nn.opcount import record
from mgrit_nn.setup_run import setup


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def floor(name: str, grad, repeats: int, device: torch.device) -> dict:
    call = _median_time(grad, repeats, 1, device)
    ops = record(grad)

    def replay(sel=None):
        for func, args, kwargs in (ops if sel is None else sel):
            func(*args, **kwargs)
    total = _best(replay, repeats)
    groups = defaultdict(list)
    for op in ops:
        groups[op[0].overloadpacket.__name__].append(op)
    by_op = {k: _best(lambda v=v: replay(v), max(3, repeats // 4)) for k, v in groups.items()}
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:10]
    one = torch.zeros(1)
    noop = [(torch.ops.aten.alias.default, (one,), {})] * len(ops)
    return {"method": name, "call_s": call, "replay_s": total,
            "dispatch_s": _best(lambda: replay(noop), repeats), "ops": len(ops),
            "by_op_s": {k: [round(v, 6), len(groups[k])] for k, v in top}}


def _step_costs(B: int, width: int, stack: int, repeats: int) -> dict:
    tanh_ = ACTIVATIONS["tanh"].fn_
    u, K = torch.randn(stack, B, width), torch.randn(stack, width, width)
    b, out = torch.randn(stack, 1, width), torch.empty(stack, B, width)
    uT, outT = u.transpose(1, 2).contiguous(), torch.empty(stack, width, B)
    n = max(1, 2000 // B)

    def per_call(fn):
        return _best(lambda: [fn() for _ in range(n)], repeats) / n
    s = per_call(lambda: torch.baddbmm(b, u, K, out=out))
    return {"B": B, "width": width, "multiply_adds": B * width * width,
            "step_product_s": s, "ns_per_multiply_add": s / (stack * B * width * width) * 1e9,
            "feature_major_product_s": per_call(lambda: torch.bmm(K, uT, out=outT)),
            "torch_tanh_s": per_call(lambda: torch.tanh(u, out=out)),
            "steps_tanh_s": per_call(lambda: tanh_(out.copy_(u))) - per_call(
                lambda: out.copy_(u))}


def products(width: int, repeats: int, stack: int = 256) -> None:
    """One step's batched product and activation per batch size B: seconds, and per
    multiply-add; the product also in the feature-major layout (W x W)(W x B), which the
    states' (B, W) layout does not use; tanh as torch's and as the steps' CPU form."""
    for B in list(range(1, 17)) + [32, 64, 256, 1000]:
        print(json.dumps(_step_costs(B, width, stack, repeats)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--products", type=int, default=0, metavar="W")
    a = p.parse_args()
    if a.products:
        products(a.products, a.repeats)
    from mpi4py import MPI
    run = setup(a.config, a.sets, MPI.COMM_WORLD)
    torch.set_flush_denormal(True)        # replayed inputs repeat in-place ops on themselves
    x, y, idx = bench_batch(run)
    method = LayerParallelMethod(run, exact=False, fixed_iters=True)   # as mgrit-nn bench
    print(json.dumps(floor("oneshot", lambda: method.step(Batch(x, y, idx)), a.repeats,
                                run.device)))
    model, grad_of = serial_gradient(run, x, y)
    print(json.dumps(floor("serial", grad_of(model), a.repeats, run.device)))


if __name__ == "__main__":
    main()
