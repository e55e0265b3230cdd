"""Step schemes (model/steps.py): the hand-written pieces against autograd, float64.

The no-grad step equals the differentiable one; the transposed linearized step
(``linearize`` + ``adjoint``) and the parameter gradient (``param_grad``) equal
``torch.func.vjp`` of the differentiable step; and the MGRIT-facing state layout
and ends (``embed``/``readout``) agree with the serial reference network.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch.func import vjp

from mgrit_nn.config import ModelConfig
from mgrit_nn.mgrit import Workspace
from mgrit_nn.model.init import shapes
from mgrit_nn.model.operators import OPERATORS
from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.model.steps import ACTIVATIONS, SCHEMES

KINDS = {"dense": (3, 5), "conv": (3, 2, 4, 4)}    # (n stacked steps, then one state's base)


def _data(kind: str, scheme, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, *base = KINDS[kind]
    state = scheme.state_shape(OPERATORS[kind], tuple(base))
    B = 4
    u = torch.randn((n, B) + state, generator=g, dtype=torch.float64)
    lam = torch.randn((n, B) + state, generator=g, dtype=torch.float64)
    c = base[0]
    wshape = (n, c, c) if kind == "dense" else (n, c, c, 3, 3)
    K = torch.randn(wshape, generator=g, dtype=torch.float64) / c ** 0.5
    b = torch.randn((n, c), generator=g, dtype=torch.float64) * 0.3
    return u, lam, K, b


@pytest.mark.parametrize("act", ["tanh", "relu", "softplus"])
@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("name", ["euler", "verlet"])
def test_scheme_pieces_match_autograd(name, kind, act):
    scheme, sigma, h = SCHEMES[name], ACTIVATIONS[act], 0.37
    u, lam, K, b = _data(kind, scheme)
    ref = scheme.step(OPERATORS[kind], sigma, u, K, b, h)
    out, fn = vjp(lambda u_, K_, b_: scheme.step(OPERATORS[kind], sigma, u_, K_, b_, h), u, K, b)
    gu, gK, gb = fn(lam)
    D = scheme.linearize(OPERATORS[kind], sigma, u, K, b, h)
    # the MGRIT hot-path forms write into ``out``: a fresh tensor, or (as in a sweep) every
    # other row of the level storage with a reused workspace; the rows between stay untouched
    for ws in (None, Workspace()):
        for _ in range(2):
            store = torch.zeros((2 * u.shape[0],) + u.shape[1:], dtype=u.dtype)
            scheme.step_(OPERATORS[kind], sigma, u, K, b, h, store[::2], ws)
            assert torch.allclose(store[::2], ref, rtol=0, atol=1e-14)
            assert not store[1::2].any()
            scheme.adjoint(OPERATORS[kind], lam, D, K, h, store[1::2], ws)
            lam_prev = store[1::2]
            assert (lam_prev - gu).abs().max() <= 1e-13 * gu.abs().max()
    pK, pb = scheme.param_grad(OPERATORS[kind], sigma, u, lam, K, b, h)
    assert (pK - gK).abs().max() <= 1e-13 * gK.abs().max()
    assert (pb - gb).abs().max() <= 1e-13 * gb.abs().max()


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_verlet_layout_and_step_by_hand(kind):
    """y first, z second; one step written out with plain matrices / convolutions."""
    scheme, sigma, h = SCHEMES["verlet"], ACTIVATIONS["tanh"], 0.25
    u, _, K, b = _data(kind, scheme, seed=3)
    y, z = OPERATORS[kind].halves(u)
    assert torch.equal(OPERATORS[kind].join(y, z), u)
    out = scheme.step(OPERATORS[kind], sigma, u, K, b, h)
    for k in range(u.shape[0]):
        if kind == "dense":
            z1 = z[k] - h * torch.tanh(y[k] @ K[k] + b[k])
            y1 = y[k] + h * torch.tanh(z1 @ K[k].T + b[k])
        else:
            z1 = z[k] - h * torch.tanh(torch.nn.functional.conv_transpose2d(
                y[k], K[k], b[k], padding=1))
            y1 = y[k] + h * torch.tanh(torch.nn.functional.conv2d(z1, K[k], b[k], padding=1))
        oy, oz = OPERATORS[kind].halves(out[k])
        assert torch.allclose(oy, y1, rtol=0, atol=1e-14)
        assert torch.allclose(oz, z1, rtol=0, atol=1e-14)


def test_serial_reference_verlet_states_have_the_scheme_layout():
    """SerialResNet (written independently) against stepping with the scheme, dense."""
    m = ModelConfig(layers=6, width=3, step="verlet", T=1.5)
    s = shapes(m, (2,), 3)
    assert s.state == (2, 3)
    net = SerialResNet(m, s)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        states = net.states(x)
        scheme, sigma = SCHEMES["verlet"], ACTIVATIONS["tanh"]
        u = scheme.embed(OPERATORS["dense"], torch.tanh(net.opening(x)))
        assert torch.equal(u, states[0]) and not states[0][:, 1].any()
        for j, layer in enumerate(net.layers):
            u = scheme.step(OPERATORS["dense"], sigma, u[None], layer.weight[None],
                            layer.bias[None], 1.5 / 6)[0]
            assert torch.allclose(u, states[j + 1], rtol=0, atol=1e-14)
        logits = net.classifier(scheme.readout(OPERATORS["dense"], u))
        assert torch.allclose(logits, net(x), rtol=0, atol=1e-14)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile (inductor) needs a C++ compiler on CPU")
@pytest.mark.parametrize("step", ["euler", "verlet"])
def test_compiled_step_gives_the_same_solve(step):
    """runtime.compile: the same residual history and states as the eager step (one rank;
    multilevel with F- and C-relaxation, strided and gathered selections)."""
    from mpi4py import MPI

    from mgrit_nn.setup_run import setup

    def solve(compiled: bool):
        run = setup(None, [f"model.step={step}", "model.layers=40", "model.width=4",
                           "data.n_train=24", "data.n_val=0", "mgrit.cfactor=[2, 4, 2]",
                           "mgrit.relax=FCF", "mgrit.max_iter=5", "mgrit.tol=0",
                           "runtime.dtype=float64",
                           f"runtime.compile={str(compiled).lower()}"], MPI.COMM_SELF)
        net = run.network()
        res = net.solve_forward(run.data.x_train.to(run.dtype))
        return res.residuals, net.solver.u.clone()

    (r_eager, u_eager), (r_comp, u_comp) = solve(False), solve(True)
    assert len(r_comp) == len(r_eager) == 5
    for a, b in zip(r_comp, r_eager, strict=True):
        assert abs(a - b) <= 1e-10 * b
    assert (u_comp - u_eager).abs().max() <= 1e-12 * u_eager.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_tanh_takes_the_sigmoid_form_from_the_threshold_and_rounds_alike(dtype):
    """The hot path's tanh_ (steps.py): torch's below SIGMOID_TANH_MIN elements per position,
    2 sigmoid(2z) - 1 from it on (ATen's CPU tanh is a scalar loop), the same function to
    within 1.5 units in the last place of 1 either way."""
    from mgrit_nn.model import steps
    per = steps.SIGMOID_TANH_MIN
    g = torch.Generator().manual_seed(0)
    for n_pos, elems in ((3, per - 1), (3, per), (1, 4 * per)):
        z = torch.randn((n_pos, elems), generator=g, dtype=dtype) * 4
        got = ACTIVATIONS["tanh"].fn_(z.clone())
        form = torch.tanh(z) if elems < per else 2 * torch.sigmoid(2 * z) - 1
        assert torch.equal(got, form), (n_pos, elems)
        assert (got - torch.tanh(z)).abs().max() <= 1.5 * torch.finfo(dtype).eps
    # the sigmoid form is not torch's tanh bit for bit (else the test could not tell them apart)
    z = torch.randn((2, 4 * per), generator=g, dtype=dtype) * 4
    assert not torch.equal(2 * torch.sigmoid(2 * z) - 1, torch.tanh(z))


@pytest.mark.parametrize("B", [2, 40])      # 2 x 8 x 8 < 400 (ATen's scalar loop), 40 x 64 not
def test_dense_hot_weights_take_the_faster_layout_and_the_same_products(B):
    """The hot path hands the dense operator K and K^T (DenseWeights): each product takes
    the second operand ATen's CPU kernel computes faster at its size (scalar loop: a
    transposed view of a contiguous matrix; MKL: a contiguous one), and equals the product
    with the plain K."""
    from mgrit_nn.model import operators as ops
    g = torch.Generator().manual_seed(1)
    n, w = 3, 8
    K = torch.randn((n, w, w), generator=g, dtype=torch.float64)
    b = torch.randn((n, w), generator=g, dtype=torch.float64)
    u = torch.randn((n, B, w), generator=g, dtype=torch.float64)
    hot = OPERATORS["dense"].hot_weights(K, K.transpose(1, 2).contiguous())
    dense = OPERATORS["dense"]
    for name in ("part", "transpose_bias"):
        a, c = getattr(dense, name)(u, hot, b), getattr(dense, name)(u, K, b)
        assert torch.allclose(a, c, rtol=0, atol=1e-13), name
    for name in ("transpose", "nobias"):
        a, c = getattr(dense, name)(u, hot), getattr(dense, name)(u, K)
        assert torch.allclose(a, c, rtol=0, atol=1e-13), name
    scalar = B * w * w < ops.SCALAR_PRODUCT
    times_t, times = ops._times_t(hot, B), ops._times(hot, B)
    assert times_t.is_contiguous() != scalar and times.is_contiguous() != scalar
