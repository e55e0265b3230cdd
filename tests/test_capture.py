"""The recording contract of ``runtime.graphs`` (mgrit/capture.py), on the CPU backend
that emulates a CUDA graph: capture does no work, replays do it on the same memory,
host transfers are refused."""

from __future__ import annotations

import pytest
import torch

from mgrit_nn.mgrit.capture import CaptureError, EmulatedGraph, new_graph


def test_capture_does_no_work_and_each_replay_does_it_once_in_place():
    x = torch.arange(4, dtype=torch.float64)
    scale = torch.tensor([2.0], dtype=torch.float64)
    g = EmulatedGraph()

    def fn():
        x.add_(1.0)
        return x * scale            # new memory at capture: rewritten by every replay

    y = g.capture(fn)
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0]       # the writes of the recording are undone
    g.replay()
    assert x.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert y.tolist() == [2.0, 4.0, 6.0, 8.0]
    scale.fill_(10.0)              # inputs are read where they are, at every replay
    g.replay()
    assert x.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert y.tolist() == [20.0, 30.0, 40.0, 50.0]


def test_a_result_built_from_new_memory_follows_the_replays():
    x = torch.ones(3, dtype=torch.float64)
    g = EmulatedGraph()
    out = g.capture(lambda: (x * 2).view(3, 1).sum(1).exp_())   # view and in-place of new memory
    x.fill_(0.5)
    g.replay()
    assert torch.equal(out, torch.ones(3, dtype=torch.float64).exp())


@pytest.mark.parametrize("bad", ["item", "tolist", "bool", "tensor"])
def test_host_transfers_are_refused_and_leave_the_state_as_it_was(bad):
    x = torch.zeros(3, dtype=torch.float64)

    def fn():
        x.add_(1.0)
        if bad == "item":
            x.sum().item()
        elif bad == "tolist":
            x.tolist()
        elif bad == "bool":
            bool((x > 0).any())
        else:
            x.add_(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))

    with pytest.raises(CaptureError, match="host and device"):
        EmulatedGraph().capture(fn)
    assert x.tolist() == [0.0, 0.0, 0.0]


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="no graph backend 'cpu'"):
        new_graph("cpu")


def test_a_dtype_conversion_on_the_device_is_not_a_host_transfer():
    x = torch.arange(3, dtype=torch.float64)
    g = EmulatedGraph()
    y = g.capture(lambda: x.to(torch.float32) * 2)
    g.replay()
    assert y.dtype == torch.float32 and y.tolist() == [0.0, 2.0, 4.0]
