"""The replay of a recorded schedule (``mgrit_nn.perfmodel.replay``) on hand-made schedules:
its arithmetic, reductions, a schedule that cannot replay, the fit and the machine file;
virtual ranks' messages, collectives and failures (``mgrit_nn.perfmodel.virtual``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from mgrit_nn.perfmodel.replay import fit, load_machine, replay
from mgrit_nn.perfmodel.virtual import on_virtual_ranks

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


@dataclass
class _Run:
    msg: object = None


@pytest.mark.parametrize("waits_on", ["message", "reduction"])
def test_a_failing_virtual_rank_ends_the_recording_with_its_error(waits_on):
    """Rank 1 fails while rank 0 waits for its message or in a reduction: no hang, the
    failing rank's error (not the other's broken wait) is what is raised."""
    def work(run):
        msg = run.msg
        if msg.rank == 1:
            raise ArithmeticError("rank 1 broke")
        if waits_on == "message":
            buf = np.zeros(2)
            msg.comm.Irecv(buf, source=1, tag=5).Wait()
        else:
            msg.allreduce_sum(1.0)

    with pytest.raises(RuntimeError, match="virtual rank 1 of 3 failed: ArithmeticError"):
        on_virtual_ranks(3, work, _Run())


def test_virtual_ranks_move_the_data_of_messages_and_collectives():
    def work(run):
        msg, r = run.msg, run.msg.rank
        out = np.zeros(3)
        send = msg.comm.Isend(np.full(3, float(r)), dest=(r + 1) % 3, tag=1)
        msg.comm.Irecv(out, source=(r - 1) % 3, tag=1).Wait()
        send.Wait()
        return out[0], msg.allreduce_sum(float(r + 1)), msg.comm.alltoall([r * 10 + k
                                                                        for k in range(3)])
    got = on_virtual_ranks(3, work, _Run())
    assert [g[0] for g in got] == [2.0, 0.0, 1.0]
    assert all(g[1] == 6.0 for g in got)
    assert [g[2] for g in got] == [[0, 10, 20], [1, 11, 21], [2, 12, 22]]


def test_the_pipeline_takes_m_plus_p_minus_1_slots():
    from mgrit_nn.perfmodel.pipeline import pipeline_s

    stage = {"kernels": 100, "elements": 10**6}
    slot = 100 * 1e-5 + 10**6 * 1e-9
    hop = 1e-6 + 4000 / 1e9
    assert pipeline_s(stage, 4, 8, 4000, M) == pytest.approx(11 * (slot + 2 * hop))
    assert pipeline_s(stage, 1, 1, 4000, M) == pytest.approx(slot)    # one stage: no messages
