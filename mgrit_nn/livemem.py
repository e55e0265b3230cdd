"""Live tensor memory of a computation, measured as its operations are dispatched.

``peak_live_bytes(fn)`` runs ``fn()`` once and follows every tensor storage its ATen
operations create (factories, results, ``out=`` buffers made inside): a storage is live
from the operation that returns it until the last tensor viewing it is gone. It returns the
largest total of bytes alive at once, counted from zero at the call (storages that existed
before the call are not counted, even when an operation writes into them). Unlike the
process's resident memory it does not depend on the allocator's caching or on the load,
so it can be asserted; it misses only what a kernel allocates and frees inside itself.
"""

from __future__ import annotations

import gc
import warnings
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _Live(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.old: set[int] = set()          # storages alive before the call
        self.new: dict[int, int] = {}       # storage address -> bytes, created in the call
        self.live = self.peak = 0
        with warnings.catch_warnings():     # isinstance on deprecated torch aliases warns
            warnings.simplefilter("ignore")
            for o in gc.get_objects():
                try:
                    tensor = isinstance(o, torch.Tensor)
                except ReferenceError:       # a weakref.proxy whose object is gone
                    continue
                if tensor:
                    self._follow(o, before=True)

    def _follow(self, t: torch.Tensor, before: bool = False) -> int:
        """Start following ``t``'s storage if it is new; the bytes it adds to the live total
        (0 for a storage that existed ``before`` the call)."""
        try:
            s = t.untyped_storage()
            ptr, n = s.data_ptr(), s.nbytes()
        except (RuntimeError, NotImplementedError):     # no storage (sparse, fake, functional)
            return 0
        if n == 0 or ptr in self.old or ptr in self.new:
            return 0
        if before:
            self.old.add(ptr)
            weakref.finalize(s, self.old.discard, ptr)
            return 0
        self.new[ptr] = n
        weakref.finalize(s, self._free, ptr)
        return n

    def _free(self, ptr: int) -> None:
        self.live -= self.new.pop(ptr, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.live += self._follow(t)
        self.peak = max(self.peak, self.live)
        return out


def peak_live_bytes(fn) -> int:
    """Runs ``fn()`` once; the most bytes of tensor storage it had created and held at once
    (module docstring)."""
    with _Live() as mode:
        fn()
    return mode.peak
