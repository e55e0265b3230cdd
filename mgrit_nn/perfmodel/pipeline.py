"""The pipeline-parallel baseline on the model's machine (issue 16, item 3).

Unlike MGRIT's, this schedule is not recorded but written down: GPipe and 1F1B over M
micro-batches on P stages take ``M + P - 1`` slots of one stage's forward and backward of
one micro-batch, each slot also passing one activation right and one gradient left
(the bubble is the same for both schedules; 1F1B only holds fewer activations). A stage's
cost is its counted kernels and elements (serial autograd of its N / P layers on one
micro-batch) priced like every other compute segment.
"""

from __future__ import annotations

from mgrit_nn.perfmodel.replay import compute_s


def pipeline_s(stage: dict, P: int, M: int, message_bytes: int, m: dict) -> float:
    """Predicted seconds of one pipelined gradient: ``stage`` = kernels and elements of one
    stage's forward + backward on one micro-batch."""
    slot = compute_s(stage["kernels"], stage["elements"], m)
    hop = m["latency_s"] + message_bytes / m["bandwidth_Bps"] if P > 1 else 0.0
    return (M + P - 1) * (slot + 2 * hop)
