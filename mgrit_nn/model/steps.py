"""Residual steps of the ODE-ResNet (design §2), batched over stacked layers.

``u`` has a leading "layer" dimension n: ``u[k]`` is stepped with weights
``K[k], b[k]``. One call applies n independent steps as one tensor operation.

A *step scheme* (:data:`SCHEMES`, ``model.step``) bundles everything the rest of the
code needs to know about a step: the state layout, the opening and classifier ends,
the differentiable step (serial pieces, stages), the no-grad batched step (MGRIT
forward), and for the adjoint its linearization, transposed step and parameter
gradient. The MGRIT core never sees a scheme, only states as tensors.
"""


from __future__ import annotations

import torch
import torch.nn.functional as F

from mgrit_nn.mgrit.propagator import Workspace
from mgrit_nn.model.operators import Operator


class Activation:
    """sigma, its in-place form (for steps that need no autograd) and its derivative,
    in place (``deriv_`` overwrites its argument) and not."""

    def __init__(self, fn, fn_, deriv_) -> None:
        self.fn, self.fn_, self.deriv_ = fn, fn_, deriv_

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)

    def deriv(self, z: torch.Tensor) -> torch.Tensor:
        return self.deriv_(z.clone())


def _dtanh_(z: torch.Tensor) -> torch.Tensor:
    """``tanh'(z) = 1 / cosh(z)^2``: one pass fewer than ``1 - tanh(z)^2`` and no cancellation
    (cosh overflows to inf for |z| > 710, giving the exact limit 0)."""
    return z.cosh_().square_().reciprocal_()


def tanh_via_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """``tanh(z) = 2 sigmoid(2z) - 1`` (differentiable; the bench's serial variant)."""
    return 2.0 * torch.sigmoid(2.0 * z) - 1.0


SIGMOID_TANH_MIN = 128    # elements per position (batch x state) from which the CPU's tanh_
                          # takes the sigmoid form (measured: docs/performance.md)


def _tanh_(z: torch.Tensor) -> torch.Tensor:
    """tanh in place, ``z`` stacked over positions. On the CPU, where one position holds at
    least SIGMOID_TANH_MIN elements, as ``2 sigmoid(2z) - 1``: ATen's CPU tanh is a scalar loop
    (2.4 ns per float32 element measured here, with AVX-512, AVX2 and no vector capability
    alike) where sigmoid is vectorized (0.25 ns), so the four passes cost a quarter of the
    one; on fewer elements the three extra launches cost more than that saves. The choice
    depends on the batch and the state only, not on how many positions a rank stacks (so not
    on the rank count). The two forms differ by rounding only (at most 1.5 units in the last
    place of 1)."""
    if z.device.type != "cpu" or z.numel() < SIGMOID_TANH_MIN * max(1, z.shape[0]):
        return z.tanh_()          # and a GPU's tanh is one vectorized kernel: keep the launches
    return z.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


ACTIVATIONS = {
    "tanh": Activation(torch.tanh, _tanh_, _dtanh_),
    "relu": Activation(torch.relu, torch.relu_, lambda z: z.gt_(0)),
    "softplus": Activation(F.softplus, F.softplus, torch.sigmoid_),
}


def scratch(ws: Workspace | None, name: str, like: torch.Tensor) -> torch.Tensor:
    """A buffer shaped like ``like`` (contiguous): from the workspace, or a new one. A step's
    scratch is named ``a``, ``b``: valid only during the one step that takes it, so the
    forward and the adjoint steps of a network share the rows (one workspace)."""
    if ws is None:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    return ws.get(name, like.shape[0], like)


def euler_step(op: Operator, act, u: torch.Tensor, K: torch.Tensor, b: torch.Tensor,
               h: float) -> torch.Tensor:
    """``u + h * sigma(K u + b)`` for a stack of layers (differentiable)."""
    return u + h * act(op.part(u, K, b))


def euler_step_(op: Operator, act: Activation, u: torch.Tensor, K: torch.Tensor,
                b: torch.Tensor, h: float, out: torch.Tensor,
                ws: Workspace | None = None) -> torch.Tensor:
    """The same into ``out`` without autograd (the MGRIT hot path): with a workspace,
    dense steps allocate nothing."""
    z = act.fn_(op.part(u, K, b, out=scratch(ws, "a", u)))
    return torch.add(u, z, alpha=h, out=out)


def euler_adjoint(op: Operator, lam: torch.Tensor, D: torch.Tensor, K: torch.Tensor,
                  h: float, out: torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
    """``(dPhi/du)^T lam = lam + h K^T (D * lam)`` into ``out``, given ``D = sigma'(z)``."""
    w = op.transpose(torch.mul(D, lam, out=scratch(ws, "a", lam)), K, out=scratch(ws, "b", lam))
    return torch.add(lam, w, alpha=h, out=out)


# -- step schemes ------------------------------------------------------------------------------
class EulerScheme:
    """``u' = u + h sigma(K u + b)``: state = the network state, shape (w,) or (c, H, W)."""

    name = "euler"
    coarse_linearization = 0.0    # sigma'(K u + b): a coarse step's is the fine one's (level 0's)

    def state_shape(self, op: Operator, base: tuple[int, ...]) -> tuple[int, ...]:
        return base

    def embed(self, op: Operator, u0: torch.Tensor) -> torch.Tensor:
        """The state at point 0 from the opening layer's output."""
        return u0

    def readout(self, op: Operator, u: torch.Tensor) -> torch.Tensor:
        """The part of the state the classifier sees."""
        return u

    def step(self, op, act, u, K, b, h):
        return euler_step(op, act, u, K, b, h)

    def step_(self, op, act, u, K, b, h, out, ws=None):
        return euler_step_(op, act, u, K, b, h, out, ws)

    def linearize(self, op, act, u, K, b, h, out=None) -> torch.Tensor:
        """What the transposed step needs at the primal state ``u``: ``sigma'(K u + b)``
        (dense: into ``out`` when given; use the return value)."""
        return act.deriv_(op.part(u, K, b, out=out))

    def adjoint(self, op, lam, D, K, h, out, ws=None):
        return euler_adjoint(op, lam, D, K, h, out, ws)

    def coarse_D(self, op, fine, own):
        """A coarse step's linearization from level 0's rows (and, where the spacing enters,
        its own rows): Euler's is level 0's."""
        return fine

    def param_grad(self, op, act, u, lam, K, b, h, D=None, ws=None):
        """``(dPhi/d(K, b) (u))^T lam`` for every stacked step (``lam`` at the step's end);
        ``D``: the linearization at ``u`` if already known (saves the forward recomputation);
        ``ws``: a workspace for the product's rows (``b``)."""
        if D is None:
            D = act.deriv_(op.part(u, K, b))
        return op.param_grad(u, torch.mul(D, lam, out=scratch(ws, "b", lam)).mul_(h), K, b)


class VerletScheme:
    """Haber-Ruthotto's Hamiltonian network (design §2), the state ``u = (y, z)``:

        z' = z - h sigma(K^T y + b),    y' = y + h sigma(K z' + b)

    Dense states are (2, w) (``u[0] = y``, ``u[1] = z``); conv states are (2c, H, W),
    y the first c channels, z the last c. ``K^T`` is the transposed matrix, for conv the
    transposed convolution. Opening ``y_0 = sigma(W_in x + b_in)``, ``z_0 = 0``; the
    classifier sees ``y_N``.

    The transposed linearized step (hand-derived; the tests check it against autograd):
    with ``a = K^T y + b``, ``D1 = sigma'(a)``, ``c = K z' + b``, ``D2 = sigma'(c)`` and the
    adjoints ``(ly', lz')`` at the step's end,

        mu = lz' + h K^T (D2 * ly')          (the adjoint of z', = lz)
        ly = ly' - h K (D1 * mu)
    """

    name = "verlet"
    coarse_linearization = 0.5    # D2 is taken at z' = z - h sigma(...): coarse levels hold
                                  # their own D2 (half a state) and read D1 from level 0

    def state_shape(self, op: Operator, base: tuple[int, ...]) -> tuple[int, ...]:
        return op.pair_shape(base)

    def embed(self, op: Operator, u0: torch.Tensor) -> torch.Tensor:
        return op.join(u0, torch.zeros_like(u0))

    def readout(self, op: Operator, u: torch.Tensor) -> torch.Tensor:
        return op.halves(u)[0]

    def step(self, op, act, u, K, b, h):
        y, z = op.halves(u)
        z1 = z - h * act(op.transpose_bias(y, K, b))
        y1 = y + h * act(op.part(z1, K, b))
        return op.join(y1, z1)

    def step_(self, op, act, u, K, b, h, out, ws=None):
        y, z = op.halves(u)
        y1, z1 = op.halves(out)
        a = op.transpose_bias(y, K, b, out=scratch(ws, "a", y))
        torch.add(z, act.fn_(a), alpha=-h, out=z1)
        c = op.part(z1, K, b, out=scratch(ws, "a", y))
        torch.add(y, act.fn_(c), alpha=h, out=y1)
        return out

    def linearize(self, op, act, u, K, b, h, out=None) -> torch.Tensor:
        """``(D1, D2)`` stacked like a state, at the primal state ``u`` with spacing ``h``."""
        y, z = op.halves(u)
        out = torch.empty_like(u) if out is None else out
        D1, D2 = op.halves(out)
        a = op.transpose_bias(y, K, b)
        act.deriv_(D1.copy_(a))
        z1 = act.fn_(a).mul_(-h).add_(z)
        act.deriv_(D2.copy_(op.part(z1, K, b)))
        return out

    def linearize_coarse(self, op, act, u, K, b, h, out) -> torch.Tensor:
        """Only ``D2`` (the part that depends on the spacing), into ``out`` (half a state)."""
        y, z = op.halves(u)
        z1 = act.fn_(op.transpose_bias(y, K, b)).mul_(-h).add_(z)
        return act.deriv_(out.copy_(op.part(z1, K, b)))     # as linearize's D2, bit for bit

    def coarse_part(self, op, D):
        """The part of a linearization stacked like a state that a coarse level holds."""
        return op.halves(D)[1]

    def coarse_D(self, op, fine, own):
        """``(D1, D2)``: D1 from level 0's rows, D2 the coarse level's own."""
        return op.halves(fine)[0], own

    def adjoint(self, op, lam, D, K, h, out, ws=None):
        """``D``: stacked like a state, or the pair ``(D1, D2)`` (a coarse level's)."""
        ly, lz = op.halves(lam)
        D1, D2 = D if isinstance(D, tuple) else op.halves(D)
        ny, mu = op.halves(out)
        a, b = scratch(ws, "a", ly), scratch(ws, "b", ly)
        torch.add(lz, op.transpose(torch.mul(D2, ly, out=a), K, out=b), alpha=h,
                  out=mu)
        torch.add(ly, op.nobias(torch.mul(D1, mu, out=a), K, out=b), alpha=-h,
                  out=ny)
        return out

    def param_grad(self, op, act, u, lam, K, b, h, D=None, ws=None):
        """No autograd: with ``D`` (the linearization at ``u``, which the adjoint solve holds)
        the adjoints of ``c = K z' + b`` and ``a = K^T y + b`` are products with it; the
        temporaries are two half states (a workspace's ``b`` rows)."""
        y, z = op.halves(u)
        ly, lz = op.halves(lam)
        D1, D2 = op.halves(self.linearize(op, act, u, K, b, h) if D is None else D)
        n, row = y.shape[0], tuple(y.shape[1:])
        t = torch.empty((2 * n,) + row, dtype=y.dtype, device=y.device) if ws is None else \
            ws.rows("b", 2 * n, row, y.dtype, y.device)
        s1, s2 = t[:n], t[n:]
        z1 = act.fn_(op.transpose_bias(y, K, b, out=s1)).mul_(-h).add_(z)      # z'
        g2 = torch.mul(D2, ly, out=s2).mul_(h)                                  # adjoint of c
        gK2, gb2 = op.param_grad(z1, g2, K, b)
        mu = op.transpose(g2, K, out=s1).add_(lz)                               # adjoint of z'
        g1 = torch.mul(D1, mu, out=s2).mul_(-h)                                 # adjoint of a
        gK1, gb1 = op.transpose_bias_grad(y, g1, K, b)
        return gK1.add_(gK2), gb1.add_(gb2)


SCHEMES = {"euler": EulerScheme(), "verlet": VerletScheme()}
