"""benchmarks/gpu.py --memory runs every memory option on the tiny configs where there is no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_memory_benchmark_smoke_trains_every_option(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "gpu.py", "--memory", "--cpu-smoke", "--models", "tiny-flux", "--json",
                          str(out)], cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    labels = [r["option"] for r in rows]
    assert len(rows) == 11 and len(set(labels)) == 11
    for row in rows:
        if row["option"].startswith("nf4"):  # CUDA only
            assert row["note"].startswith("skipped: nf4 needs CUDA")
        else:
            assert row["s_per_step"] is not None and row["note"] == "", row
    assert any("swap 2/4" in label for label in labels) and any("activation offload" in label for label in labels)
    assert "| tiny-flux | int4 + checkpointing |" in run.stdout
