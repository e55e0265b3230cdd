"""benchmarks/gpu_session.py, the GPU machine's one command, at toy sizes on the CPU: every
CPU step runs and leaves its JSON (a lent GPU machine's minutes are too few to debug it
there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cpu_steps_run_and_report(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_session.py"), "--out",
                        str(tmp_path), "--small", "--only", "cpu"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(res) == ["cpu_p1", "cpu_p2", "env", "model"]
    for name in ("cpu_p1", "cpu_p2", "model"):
        assert res[name]["exit"] == 0, res[name]["tail"]
    assert res["cpu_p2"]["json"]["ranks"] == 2 and res["cpu_p1"]["json"]["oneshot_grad_s"] > 0
    assert [p["ranks"] for p in res["model"]["json"]["predicted"]] == [1, 2]
    assert "cpu_p2: exit 0" in p.stdout
