"""SGD and Adam: torch.optim's update bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mgrit_nn.optim import SGD, Adam


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_sgd_and_adam_equal_torch_optim_bit_for_bit(dtype, wd):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=gen, dtype=dtype), torch.randn(7, generator=gen,
                                                                      dtype=dtype)]
    pairs = [(torch.optim.Adam, Adam, {"lr": 0.01}), (torch.optim.SGD, SGD,
                                                      {"lr": 0.1, "momentum": 0.9})]
    for theirs_cls, ours_cls, kw in pairs:
        a = [p.clone().requires_grad_() for p in start]
        b = [p.clone().requires_grad_() for p in start]
        theirs, ours = theirs_cls(a, weight_decay=wd, **kw), ours_cls(b, weight_decay=wd, **kw)
        for _ in range(30):
            grads = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in start]
            for xs in (a, b):
                for x, g in zip(xs, grads, strict=True):
                    x.grad = g.clone()
            theirs.step()
            ours.step()
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), ours_cls
        sa, sb = theirs.state_dict()["state"], ours.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            assert sa[i].keys() == sb[i].keys()
            assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i]), (ours_cls, i)


def test_our_optimizers_do_not_import_torch_dynamo():
    """torch.optim's own step wrappers import it: 2.3 s of CPU per rank at every start."""
    code = ("import sys, torch; from mgrit_nn.optim import Adam, SGD\n"
            "for cls in (Adam, SGD):\n"
            "    p = torch.zeros(3, requires_grad=True); o = cls([p], lr=0.1)\n"
            "    p.grad = torch.ones(3); o.step(); o.zero_grad()\n"
            "    o.load_state_dict(o.state_dict())\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr
