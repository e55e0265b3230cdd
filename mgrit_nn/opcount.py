"""Tensor operations of a computation, counted as they are dispatched.

On a GPU, and on a CPU at small batches, a narrow network's gradient costs about one
fixed overhead per tensor operation (a kernel launch, PyTorch's dispatch), not arithmetic:
serial autograd issues a few operations per layer, forward and backward. ``count_ops``
counts every ATen operation a call dispatches on this thread, the autograd engine's
backward operations included (a CPU backward runs on the calling thread), the
decomposed ones of composite operations rather than the composite. Shape and view
queries that launch nothing (``aten.size``, ``aten.view``, ``aten.detach`` ...) are counted
too, as PyTorch dispatches them; ``kernels`` leaves out the operations that only make a
new view of existing memory.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

# operations that only make a new view or read metadata: no kernel runs
_VIEWS = {"view", "_unsafe_view", "as_strided", "t", "transpose", "permute", "expand",
          "unsqueeze", "squeeze", "select", "slice", "alias", "detach", "unfold",
          "reshape", "size", "stride", "numel", "sym_size", "sym_stride", "lift_fresh",
          "_reshape_alias", "split", "split_with_sizes", "unbind", "narrow"}


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> dict:
    """Runs ``fn()`` once; returns {"ops": every dispatched ATen operation, "kernels": those
    that are not views, "by_op": {name: count}}."""
    with _Count() as mode:
        fn()
    ops = mode.ops
    kernels = sum(n for name, n in ops.items() if name not in _VIEWS)
    return {"ops": sum(ops.values()), "kernels": kernels, "by_op": dict(ops)}


class _Record(TorchDispatchMode):
    """Every dispatched operation with copies of its tensor arguments: one copy per storage
    (taken when the recording first meets it, before the operation runs), each argument a
    view of its storage's copy with the same offset, sizes and strides, so replayed
    operations read and write the copies as the originals did."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []
        self._copies: dict[tuple[int, int], torch.UntypedStorage] = {}

    def _copy(self, t):
        if not isinstance(t, torch.Tensor):
            return t
        s = t.untyped_storage()
        key = (s.data_ptr(), s.nbytes())     # an address freed and reused by a larger storage
        c = self._copies.get(key)            # gets its own copy
        if c is None:
            c = self._copies[key] = s.clone()
        return torch.empty(0, dtype=t.dtype, device=t.device).set_(
            c, t.storage_offset(), t.size(), t.stride())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append((func, tree_map(self._copy, args), tree_map(self._copy, kwargs)))
        return func(*args, **kwargs)


def record(fn) -> list:
    """Runs ``fn()`` once; its ATen operations as ``(op, args, kwargs)`` on copies of their
    tensors (:class:`_Record`), to be called again (``benchmarks/kernel_floor.py``)."""
    with _Record() as mode:
        fn()
    return mode.ops
