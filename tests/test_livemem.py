"""``livemem.peak_live_bytes``: what a call creates and holds at once, nothing from before."""

from __future__ import annotations

import torch

from mgrit_nn.livemem import peak_live_bytes


def test_livemem_counts_what_a_call_creates_and_holds():
    keep = torch.zeros(1000, dtype=torch.float64)      # exists before: not counted

    def work():
        a = torch.ones(2000, dtype=torch.float64)      # 16 kB, held to the end
        for _ in range(3):                             # 8 kB each, freed each time
            torch.mul(a[:1000], 2.0).add_(keep)
        keep.add_(1.0)                                 # in place: nothing new
        return a
    assert peak_live_bytes(work) == 16000 + 8000
