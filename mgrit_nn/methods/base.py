"""The training-method protocol: what the training loop calls, and nothing else.

A method is one module of ``mgrit_nn/methods/`` with one class deriving from
:class:`Method` and one entry in :mod:`mgrit_nn.methods.registry`. The loop
(:class:`mgrit_nn.train.loop.Trainer`) drives it as follows::

    method = Class(run)                   # built from the run (config, data, ranks)
    opt = optimizer(method.parameters(), method.lr())  # this rank's tensors; None: train.lr
    method.bind(opt)                      # once the optimizer exists
    extra = method.start()                # once per run before its first step
    for every step:
        info = method.step(batch)         # the algorithm box: leaves gradients in .grad
        opt.step(closure)                 # closure: method.loss(batch) (line search only)
    method.evaluate(x, y)                 # exact forward pass (validation)
    method.report(data)                   # after training: keys added to the result

Checkpoints: ``state_dict()`` returns the method's own groups of the checkpoint as
a nested dict in the *global* layout (independent of the rank count): numpy arrays,
of which rank 0's value is written, and :class:`~mgrit_nn.parts.Part` s,
each rank's rows of a global array (``rows_part``; the writer gathers them or
writes them as shards). ``load_state_dict(ckpt)`` reads them back from a read-only
mapping of the checkpoint (an HDF5 file or a nested dict), every rank reading its
own rows. Parameter-shaped tensors go through the global flat parameter order with
``local_flat`` / ``share`` / ``local_from_share``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from mgrit_nn.parts import Part


@dataclass
class Batch:
    """This replica's share of one mini-batch."""

    x: torch.Tensor             # inputs
    y: torch.Tensor             # labels
    idx: torch.Tensor           # their indices in the training set
    scale: float = 1.0          # share of the whole batch (losses and gradients are scaled)


@dataclass
class TrainData:
    """The training and validation sets on this rank's device."""

    x: torch.Tensor
    y: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor


@dataclass
class StepInfo:
    """One gradient evaluation on this replica's share of a batch."""

    loss: float                 # this replica's loss, scaled by its share of the batch
    correct: int                # correctly classified samples of this share
    fwd_iters: int = 0
    fwd_residual: float = 0.0
    adj_iters: int = 0
    adj_residual: float = 0.0
    fwd_residuals: list[float] = field(default_factory=list)
    adj_residuals: list[float] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)   # method-specific history columns


def correct(logits: torch.Tensor | None, y: torch.Tensor) -> int:
    return 0 if logits is None else int((logits.argmax(1) == y).sum())


class Method(ABC):
    """One training method (see the module docstring for the calling sequence)."""

    def __init__(self, run) -> None:
        self.run = run

    # -- what is trained ---------------------------------------------------------------------
    @abstractmethod
    def parameters(self) -> list[torch.Tensor]:
        """This rank's trained tensors (a layer lives on exactly one rank of the group)."""

    @abstractmethod
    def dot(self, a: float) -> float:
        """Sum a local inner product over the ranks holding parameters."""

    def lr(self) -> float | None:
        """The learning rate of :meth:`parameters` if the method has its own (default: None,
        ``train.lr``); the schedule scales it like ``train.lr``."""
        return None

    def bind(self, opt: torch.optim.Optimizer) -> None:
        """Called once the optimizer of :meth:`parameters` exists (default: nothing)."""
        return None

    # -- the algorithm ---------------------------------------------------------------------
    def start(self) -> dict[str, float]:
        """A phase before the first step (e.g. a global prediction); history columns of the
        run's first step. Called once per run, also when resumed: a method that has done its
        start (or restored it from a checkpoint) returns {}."""
        return {}

    @abstractmethod
    def step(self, batch: Batch) -> StepInfo:
        """One step of the method on ``batch``: gradients of :meth:`parameters` in ``.grad``
        (None: not updated in this step), auxiliary variables updated, the loss logged."""

    def loss(self, batch: Batch) -> float:
        """The loss at the current parameters (L-BFGS' line search; scaled by the share)."""
        raise NotImplementedError(f"{type(self).__name__} has no line search")

    @abstractmethod
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """(summed cross-entropy, correct) of the exact forward pass; counted on one rank."""

    def report(self, data: TrainData) -> dict:
        """After training, on every rank: keys added to the run's result."""
        return {}

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The method's own checkpoint groups, global layout (rank 0's value is written)."""
        return {}

    def load_state_dict(self, ckpt: Mapping) -> None:
        """Read the groups of :meth:`state_dict` back from a checkpoint (every rank)."""
        return None

    @abstractmethod
    def local_flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Tensors aligned with :meth:`parameters` as this rank's flat share."""

    @abstractmethod
    def gather_flat(self, local: torch.Tensor) -> torch.Tensor | None:
        """The global flat vector of every rank's share (on rank 0, None elsewhere)."""

    @abstractmethod
    def share(self) -> tuple[int, int]:
        """(start, length) of this rank's share in the global flat vector."""

    @abstractmethod
    def local_from_share(self, share: torch.Tensor) -> list[torch.Tensor]:
        """This rank's tensors, aligned with :meth:`parameters`, from its share of a global
        flat vector (checkpoints read only the share)."""


class PartitionedMethod(Method):
    """What every method on the layer partition shares (design §3): this rank's parameters
    of a :class:`~mgrit_nn.model.parallel.ParallelResNet`, reductions over the layer group,
    exact evaluation by one distributed forward sweep, and the global flat layout of
    checkpoints."""

    def __init__(self, run) -> None:
        from mgrit_nn.model.layout import ParamLayout

        super().__init__(run)
        self.net = run.network()
        self.run_layout = ParamLayout(run.shapes, run.cfg.model.layers)

    def parameters(self) -> list[torch.Tensor]:
        return self.net.local_parameters()

    def dot(self, a: float) -> float:
        return self.net.msg.allreduce_sum(a)       # each layer lives on one rank of the group

    def evaluate(self, x, y) -> tuple[float, int]:
        """(summed cross-entropy, correct) of the exact forward pass; counts on the last rank."""
        self.net.propagate(x)
        if not self.net.last:
            return 0.0, 0
        with torch.no_grad():
            logits = self.net.classifier(self.net.final_state())
            ce = torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        return ce, correct(logits, y)

    # -- global flat vectors (checkpoints) ---------------------------------------------------
    def local_flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return self.net.flat([t.detach() for t in tensors])

    def gather_flat(self, local: torch.Tensor) -> torch.Tensor | None:
        return self.net.gather_flat(local)

    def rows_part(self, local: torch.Tensor | None, row: tuple[int, ...]) -> Part:
        """This rank's rows of shape ``row`` (None: no rows) as its :class:`Part` of the
        global array that stacks every rank's rows in chain order: the method state of
        checkpoints (collective over the layer group: the rows before this rank's)."""
        net, row = self.net, tuple(row)
        data = np.zeros((0,) + row, dtype=torch.zeros(0, dtype=net.dtype).numpy().dtype) \
            if local is None else local.detach().cpu().reshape((-1,) + row).numpy()
        counts = net.msg.comm.allgather(len(data)) if net.msg.size > 1 else [len(data)]
        return Part(data, sum(counts[:net.msg.rank]), sum(counts))

    def share(self) -> tuple[int, int]:
        net = self.net
        return (self.run_layout.offset(net.first, net.jlo),
                self.local_flat(self.parameters()).numel())

    def local_from_share(self, share: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        return net.unflat(share.to(device=net.device, dtype=net.dtype))
