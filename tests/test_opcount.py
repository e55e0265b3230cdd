"""Tensor operations counted as dispatched (mgrit_nn/opcount.py, bench's *_kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mgrit_nn.model.serial import SerialResNet
from mgrit_nn.opcount import count_ops
from mgrit_nn.setup_run import setup


def test_every_kernel_is_counted_and_views_are_not_kernels():
    x = torch.ones(4, 3)

    def adds() -> None:
        y = x
        for _ in range(5):
            y = y + 1.0                     # 5 kernels
        y.view(12).unsqueeze(0).t()         # views only (a reshape of y.t() would copy)
    c = count_ops(adds)
    assert c["by_op"]["add"] == 5 and c["kernels"] == 5 and c["ops"] > c["kernels"]


def test_backward_operations_are_counted_and_serial_autograd_is_linear_in_depth():
    """A serial gradient costs a fixed number of kernels per layer, forward and backward:
    the count grows by the same amount for every N more layers."""
    def kernels(N: int) -> int:
        run = setup(None, [f"model.layers={N}", "data.n_train=8", "data.n_val=0"])
        model = SerialResNet(run.cfg.model, run.shapes, run.dtype)
        x, y = run.data.x_train.to(run.dtype), run.data.y_train
        forward = count_ops(lambda: model(x))["kernels"]
        total = count_ops(lambda: F.cross_entropy(model(x), y).backward())["kernels"]
        assert total > 2 * forward - 10       # the backward pass is counted too
        return total
    k8, k16, k24 = kernels(8), kernels(16), kernels(24)
    assert k16 - k8 == k24 - k16 > 8 * 4      # several kernels per layer and step
