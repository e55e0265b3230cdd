"""The shallow (coarse) network and its use as an initial guess: every ``coarsen``-th layer
of the network with step ``coarsen * h``, trained serially, its blocks replicated into the
deep network.

One facility for every method that starts from a trained shallow network:

- ``penalty`` / ``al`` (``penalty.init: shallow``): Sun et al., Algorithm 1 step [2] and
  section 4.1 -- "a shallow ResNet counterpart ... extracting every n-th module ... trained
  with low accuracy at a correspondingly low cost. By replicating the trained blocks, we
  obtain an effective initial guess for auxiliary and control variables";
- ``parpas``' global prediction (Parpas & Muir, Algorithm 4), which also collects (state,
  co-state) pairs on the way (the ``pass_fn`` hook of :meth:`Shallow.train`).

**Replication and its step size.** Coarse block J (step H = coarsen * h) becomes the fine
layers ``J*coarsen .. J*coarsen + coarsen - 1``, each with step h: the coarse step
``u + H f_J(u)`` is replaced by ``coarsen`` steps ``u + h f_J(u)`` of the same vector field
(Chang et al.'s multi-level ResNet: copy the block, divide its step). Both are Euler
discretizations of ``du/dt = f_J(u)`` on the block's interval, so the deep network
reproduces the shallow one's states at the coarse points up to the shallow step's local
error, (1 - 1/coarsen) H^2/2 |f_J' f_J| per block (O(H) over a fixed T: first order;
halving T with the blocks fixed quarters it -- tests/mpi/test_shallow.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mgrit_nn.data import BatchStream
from mgrit_nn.model.layout import ParamLayout
from mgrit_nn.model.stage import open_state, run_steps
from mgrit_nn.optim import make_optimizer

CHUNK = 4096              # samples per piece of the whole-training-set passes


class CoarseNetwork:
    """The prediction phase's network: N/coarsen steps of size coarsen*h, serial, autograd."""

    def __init__(self, net, full: torch.Tensor, coarsen: int) -> None:
        named = ParamLayout(net.shapes, net.cfg.layers).named(full)
        self.net, self.H = net, net.h * coarsen
        n_coarse = net.cfg.layers // coarsen

        def leaf(t):
            return t.detach().clone().to(net.device, net.dtype).requires_grad_()
        self.open_w, self.open_b = leaf(named["opening/weight"]), leaf(named["opening/bias"])
        self.cls_w = leaf(named["classifier/weight"])
        self.cls_b = leaf(named["classifier/bias"])
        # injection: coarse layer J starts from fine layer J * coarsen
        self.K = leaf(torch.stack([named[f"layers/{J * coarsen:05d}/weight"]
                                   for J in range(n_coarse)]))
        self.b = leaf(torch.stack([named[f"layers/{J * coarsen:05d}/bias"]
                                   for J in range(n_coarse)]))

    def parameters(self) -> list[torch.Tensor]:
        return [self.open_w, self.open_b, self.K, self.b, self.cls_w, self.cls_b]

    def states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """u_0 .. u_{N/coarsen}: the fine network's opening and steps, spacing coarsen*h."""
        u0 = open_state(self.net, x, self.open_w, self.open_b)
        return run_steps(self.net, u0, self.K, self.b, self.H, keep=True)

    def logits(self, uN: torch.Tensor) -> torch.Tensor:
        uN = self.net.scheme.readout(self.net.shapes.op, uN)
        return F.linear(uN.flatten(1), self.cls_w, self.cls_b)


def at_point(states: list[torch.Tensor], s: int, coarsen: int) -> torch.Tensor:
    """The trajectory at fine point ``s``, linear in time between coarse points."""
    q, r = divmod(s, coarsen)
    if r == 0:
        return states[q]
    f = r / coarsen
    return (1 - f) * states[q] + f * states[q + 1]


PassFn = Callable[[CoarseNetwork, torch.Tensor, torch.Tensor, list], float]


def cross_entropy_pass(coarse: CoarseNetwork, x, y, params: list[torch.Tensor]) -> float:
    """Forward + backward of the coarse network's cross-entropy: ``.grad`` of ``params``."""
    with torch.enable_grad():
        loss = F.cross_entropy(coarse.logits(coarse.states(x)[-1]), y)
        grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    return float(loss.detach())


class Shallow:
    """The shallow network of a (layer-parallel) deep network ``net``, on every rank.

    Built from the deep network's current weights (one gather + broadcast: collective),
    trained serially and redundantly on every rank (the same inputs and operations give
    the same bits everywhere), then :meth:`inject`-ed into each rank's layers."""

    def __init__(self, net, layout_size: int, coarsen: int) -> None:
        full = torch.zeros(layout_size, dtype=net.dtype)
        got = net.gather_flat(net.flat([p.detach() for p in net.local_parameters()]))
        if got is not None:
            full.copy_(got)
        net.msg.bcast_tensor(full, root=0)
        self.deep, self.coarsen = net, coarsen
        self.net = CoarseNetwork(net, full, coarsen)

    def train(self, x: torch.Tensor, y: torch.Tensor, iters: int, lr: float | None,
              train_cfg, data_cfg, pass_fn: PassFn = cross_entropy_pass) -> float:
        """``iters`` steps of ``train.optimizer`` (learning rate ``lr``, null: ``train.lr``)
        on the batches of ``data.batch_size`` (epochs -1, -2, ...: not the steps' own);
        ``pass_fn`` sets the gradients. The last batch's loss (nan without steps)."""
        params = self.net.parameters()
        opt = make_optimizer(params, train_cfg, lambda a: a, lr)
        stream = BatchStream(len(x), data_cfg.batch_size, data_cfg.seed, first=-1, step=-1)
        loss = float("nan")
        for _ in range(iters):
            idx = stream.next()
            loss = pass_fn(self.net, x[idx], y[idx], params)
            opt.step()
        return loss

    @torch.no_grad()
    def state_at(self, x: torch.Tensor, point: int) -> torch.Tensor:
        """The shallow network's state at fine point ``point`` for every sample of ``x``
        (linear in time between coarse points)."""
        return torch.cat([at_point(self.net.states(x[lo:lo + CHUNK]), point, self.coarsen)
                          for lo in range(0, len(x), CHUNK)])

    @torch.no_grad()
    def inject(self) -> None:
        """The trained blocks replicated into this rank's layers: fine layer j gets coarse
        block ``j // coarsen`` (with the fine step h), opening / classifier as trained."""
        net, c = self.deep, self.net
        rows = torch.arange(net.jlo, net.jhi + 1, device=net.device) // self.coarsen
        net.weight.copy_(c.K.detach().index_select(0, rows))
        net.bias.copy_(c.b.detach().index_select(0, rows))
        if net.first:
            net.open_weight.copy_(c.open_w.detach())
            net.open_bias.copy_(c.open_b.detach())
        if net.last:
            net.cls_weight.copy_(c.cls_w.detach())
            net.cls_bias.copy_(c.cls_b.detach())
