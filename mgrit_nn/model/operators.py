"""The linear part of a layer, dense or 3x3 convolution, as one object chosen once.

``model.kind`` picks an :class:`Operator` (:data:`OPERATORS`); the step schemes
(``model/steps.py``), the network ends and the serial reference compose it and never
ask which kind it is. Batched maps take a leading "layer" dimension n: ``u[k]`` goes
with ``K[k], b[k]``, all n at once. ``out`` (optional) receives a dense result without
a new allocation; the conv forms return a new tensor, so callers use the return value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vjp, vmap


class Operator:
    """What a step needs of its linear part ``u -> K u + b`` (see the two subclasses)."""

    name: str
    unfold: int             # state sets a batched step unfolds its input into (memory.py)
    autograd_sets: int      # state sets autograd keeps per layer (memory.py, measured)
    both_layouts = False    # whether the hot path's layer tables also hold each K^T

    def hot_weights(self, K: torch.Tensor, Kt: torch.Tensor | None):
        """What the no-grad steps take as ``K`` from the layer tables' rows ``K`` (and, with
        ``both_layouts``, ``Kt``); every method below accepts it as well as a plain ``K``."""
        return K

    def shapes(self, m, input_shape: tuple[int, ...], n_classes: int) -> tuple:
        """(one sample's state, opening (W, b), layer (K, b), classifier (W, b) shapes) for
        ``model`` settings ``m``; ValueError if the inputs do not fit this kind."""
        raise NotImplementedError

    def part(self, u, K, b, out=None) -> torch.Tensor:
        """``K_k u_k + b_k`` for every k."""
        raise NotImplementedError

    def transpose(self, v, K, out=None) -> torch.Tensor:
        """``K_k^T v_k`` (the adjoint of the linear part without its bias)."""
        raise NotImplementedError

    def nobias(self, v, K, out=None) -> torch.Tensor:
        """``K_k v_k`` (the linear part without its bias)."""
        raise NotImplementedError

    def transpose_bias(self, v, K, b, out=None) -> torch.Tensor:
        """``K_k^T v_k + b_k`` (the Verlet z-update's argument)."""
        raise NotImplementedError

    def param_grad(self, u, g, K, b) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d(K_k u_k + b_k)/d(K_k, b_k))^T g_k`` for every k."""
        with torch.enable_grad():
            _, fn = vjp(lambda K_, b_: self.part(u, K_, b_), K, b)
        return fn(g)

    def transpose_bias_grad(self, v, g, K, b) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d(K_k^T v_k + b_k)/d(K_k, b_k))^T g_k`` for every k."""
        with torch.enable_grad():
            _, fn = vjp(lambda K_, b_: self.transpose_bias(v, K_, b_), K, b)
        return fn(g)

    # -- two-part states (Verlet: y and z) -------------------------------------------------
    def pair_shape(self, base: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def halves(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (y, z) of two-part states."""
        raise NotImplementedError

    def join(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The two-part state of (y, z) (inverse of :meth:`halves`)."""
        raise NotImplementedError

    # -- one layer, unbatched: the opening and the serial reference --------------------------
    def opening(self, x, W, b) -> torch.Tensor:
        """``W x + b`` of the opening layer for a batch of inputs ``x``."""
        raise NotImplementedError

    def module(self, wshape: tuple[int, ...]) -> nn.Module:
        """A torch module with a weight of shape ``wshape`` (the serial network's layer)."""
        raise NotImplementedError

    def module_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input batch as the serial network's opening module takes it."""
        return x

    def module_transpose_bias(self, y, W, b) -> torch.Tensor:
        """``W^T y + b`` of one layer (the serial network's Verlet step)."""
        raise NotImplementedError


class DenseWeights:
    """A stack of dense layer matrices held in both layouts, ``K`` and ``Kt`` (= K^T), each a
    view of a contiguous table (the hot path's layer tables, model/layers.py), so that every
    product takes the operand layout ATen's CPU kernels compute faster at its size."""

    __slots__ = ("K", "Kt")

    def __init__(self, K: torch.Tensor, Kt: torch.Tensor) -> None:
        self.K, self.Kt = K, Kt


# ATen's CPU bmm/baddbmm: products of fewer multiply-adds run in a scalar loop, which is
# 2-2.5x faster with the second operand a transposed view of a contiguous matrix; larger
# ones go to MKL, 1.3-1.6x faster with it contiguous (docs/performance.md, measured)
SCALAR_PRODUCT = 400


def _scalar_kernel(K: DenseWeights, rows: int) -> bool:
    """Whether ATen's CPU kernel computes these products (``rows`` rows each) in its loop."""
    return rows * K.K.shape[1] * K.K.shape[2] < SCALAR_PRODUCT


def _times_t(K, rows: int) -> torch.Tensor:
    """The second operand of ``u @ K^T`` (other devices: always the view of ``K``)."""
    if isinstance(K, DenseWeights):
        if K.K.device.type == "cpu" and not _scalar_kernel(K, rows):
            return K.Kt
        K = K.K
    return K.transpose(1, 2)


def _times(K, rows: int) -> torch.Tensor:
    """The second operand of ``v @ K`` (other devices: always ``K``)."""
    if isinstance(K, DenseWeights):
        if K.K.device.type == "cpu" and _scalar_kernel(K, rows):
            return K.Kt.transpose(1, 2)
        K = K.K
    return K


class Dense(Operator):
    """States (B, w): ``K u + b`` is a batched matrix product. ``K``: the stacked matrices,
    or (the hot path) a :class:`DenseWeights`."""

    name = "dense"
    unfold = 0              # memory (mgrit_nn/memory.py): a matmul unfolds nothing
    autograd_sets = 4       # measured: the step's input, sigma's input and output, the update
    both_layouts = True     # the layer tables hold K^T too (hot_weights)

    def shapes(self, m, input_shape, n_classes):
        d_in, w = math.prod(input_shape), m.width
        return (w,), ((w, d_in), (w,)), ((w, w), (w,)), ((n_classes, w), (n_classes,))

    def hot_weights(self, K, Kt):
        return DenseWeights(K, Kt)

    def part(self, u, K, b, out=None):
        return torch.baddbmm(b.unsqueeze(1), u, _times_t(K, u.shape[1]), out=out)

    def transpose(self, v, K, out=None):
        return torch.bmm(v, _times(K, v.shape[1]), out=out)

    def nobias(self, v, K, out=None):
        return torch.bmm(v, _times_t(K, v.shape[1]), out=out)

    def transpose_bias(self, v, K, b, out=None):
        return torch.baddbmm(b.unsqueeze(1), v, _times(K, v.shape[1]), out=out)

    def param_grad(self, u, g, K, b):
        return torch.bmm(g.transpose(1, 2), u), g.sum(1)

    def transpose_bias_grad(self, v, g, K, b):
        return torch.bmm(v.transpose(1, 2), g), g.sum(1)

    def pair_shape(self, base):
        return (2,) + base

    def halves(self, u):
        return u.select(-2, 0), u.select(-2, 1)

    def join(self, y, z):
        return torch.stack((y, z), -2)

    def opening(self, x, W, b):
        return F.linear(x.flatten(1), W, b)

    def module(self, wshape):
        return nn.Linear(wshape[1], wshape[0], dtype=torch.float64)

    def module_input(self, x):
        return x.flatten(1)

    def module_transpose_bias(self, y, W, b):
        return F.linear(y, W.t(), b)


def _conv(u, K, b):
    return F.conv2d(u, K, b, padding=1)


def _conv_t(v, K):
    return F.conv_transpose2d(v, K, padding=1)


def _conv_nb(u, K):
    return F.conv2d(u, K, None, padding=1)


def _conv_tb(v, K, b):
    return F.conv_transpose2d(v, K, b, padding=1)


class Conv(Operator):
    """States (B, c, H, W): ``K u + b`` is a 3x3 convolution with zero padding, batched over
    layers with ``vmap``; the transposed map is the transposed convolution."""

    name = "conv"
    unfold = 9              # memory: a batched 3x3 convolution unfolds its input 9 times
    autograd_sets = 12      # measured: the unfolded input comes on top of dense's 4 (12.4)

    def shapes(self, m, input_shape, n_classes):
        if len(input_shape) != 3:
            raise ValueError("model.kind: conv needs an image data set (C, H, W inputs); "
                             f"this data set has inputs of shape {tuple(input_shape)}")
        (c_in, H, W), c = input_shape, m.channels
        return ((c, H, W), ((c, c_in, 3, 3), (c,)), ((c, c, 3, 3), (c,)),
                ((n_classes, c * H * W), (n_classes,)))
    _part, _transpose = vmap(_conv), vmap(_conv_t)
    _nobias, _transpose_bias = vmap(_conv_nb), vmap(_conv_tb)

    def part(self, u, K, b, out=None):
        return Conv._part(u, K, b)

    def transpose(self, v, K, out=None):
        return Conv._transpose(v, K)

    def nobias(self, v, K, out=None):
        return Conv._nobias(v, K)

    def transpose_bias(self, v, K, b, out=None):
        return Conv._transpose_bias(v, K, b)

    def pair_shape(self, base):
        return (2 * base[0],) + base[1:]

    def halves(self, u):
        c = u.shape[-3] // 2
        return u.narrow(-3, 0, c), u.narrow(-3, c, c)

    def join(self, y, z):
        return torch.cat((y, z), -3)

    def opening(self, x, W, b):
        return F.conv2d(x, W, b, padding=1)

    def module(self, wshape):
        return nn.Conv2d(wshape[1], wshape[0], 3, padding=1, dtype=torch.float64)

    def module_transpose_bias(self, y, W, b):
        return F.conv_transpose2d(y, W, b, padding=1)


OPERATORS: dict[str, Operator] = {"dense": Dense(), "conv": Conv()}
