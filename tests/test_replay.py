"""The replay of a recorded schedule (``mgrit_nn.perfmodel.replay``) on hand-made schedules:
its arithmetic, reductions, a schedule that cannot replay, the fit and the machine file."""

from __future__ import annotations

import math

import pytest

from mgrit_nn.perfmodel.replay import fit, load_machine, replay

M = {"kernel_s": 1e-5, "element_s": 1e-9, "latency_s": 1e-6, "bandwidth_Bps": 1e9}


def test_a_message_arrives_latency_plus_size_over_bandwidth_after_it_is_sent():
    a = [("c", 10, 0, 0.0), ("s", 1, 7, 1000), ("c", 5, 0, 0.0)]
    b = [("r", 0, 7, 1000), ("c", 1, 2000, 0.0)]
    r = replay([a, b], M)
    sent = 10 * 1e-5
    arrives = sent + 1e-6 + 1000 / 1e9
    assert r["seconds"] == pytest.approx(max(sent + 5e-5, arrives + 1e-5 + 2000e-9))
    assert r["busy_s"] == pytest.approx([15e-5, 1e-5 + 2000e-9])


def test_a_receive_that_comes_first_in_the_list_still_waits_for_its_sender():
    """Rank 1 reaches its receive before rank 0 sends; the order of the ranks in the loop
    does not matter, and messages of one (source, tag) arrive in order."""
    a = [("r", 1, 3, 8), ("c", 1, 0, 0.0), ("s", 1, 3, 8), ("s", 1, 3, 8)]
    b = [("c", 100, 0, 0.0), ("s", 0, 3, 8), ("r", 0, 3, 8), ("r", 0, 3, 8)]
    r = replay([a, b], M)
    hop = 1e-6 + 8 / 1e9
    t0 = 100e-5 + hop                 # rank 0 starts its kernel after the message
    assert r["seconds"] == pytest.approx(t0 + 1e-5 + hop)


def test_a_reduction_waits_for_every_rank_and_costs_log2_p_latencies():
    traces = [[("c", k, 0, 0.0), ("a", 8), ("c", 1, 0, 0.0)] for k in (1, 2, 3, 9)]
    r = replay(traces, M)
    assert r["seconds"] == pytest.approx(9e-5 + math.ceil(math.log2(4)) * 1e-6 + 1e-5)


def test_a_schedule_whose_receive_is_never_sent_is_refused():
    with pytest.raises(ValueError, match="never matched"):
        replay([[("r", 1, 3, 8)], [("c", 1, 0, 0.0)]], M)


def test_the_fit_recovers_the_two_costs_and_never_goes_negative():
    segs = [(k, e, k * 2e-5 + e * 3e-9) for k, e in [(1, 10), (50, 10), (3, 100000), (7, 7)]]
    m = fit(segs)
    assert m["kernel_s"] == pytest.approx(2e-5) and m["element_s"] == pytest.approx(3e-9)
    m = fit([(1, 0, 1e-5), (1, 1000, 0.5e-5)])       # more elements, less time: no negatives
    assert m["kernel_s"] >= 0 and m["element_s"] >= 0


def test_machine_files_need_all_four_numbers(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("kernel_s: 1.0e-5\nelement_s: 2e-9\nlatency_s: 1.5e-6\nbandwidth_Bps: 1.2e10\n")
    assert load_machine(f) == {"kernel_s": 1e-5, "element_s": 2e-9, "latency_s": 1.5e-6,
                               "bandwidth_Bps": 1.2e10}
    f.write_text("kernel_s: 1.0e-5\nbandwidth_Bps: 0\n")
    with pytest.raises(ValueError, match="element_s, latency_s, bandwidth_Bps"):
        load_machine(f)
