"""benchmarks/bench_index_memory.py runs end to end on a small synthetic store (its figures are for the docs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_the_index_memory_benchmark_measures_both_views(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "bench_index_memory.py"
    out = subprocess.run(
        [sys.executable, str(script), "--docs", "3000", "--work", str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["kind"] for r in rows] == ["eval", "train"]
    for row in rows:
        assert row["spans"] > 3000  # Pile-like lengths: some documents have several windows
        assert row["files_per_span"] > 100 and row["windows_numpy_peak_per_span"] > 0
        assert row["build_max_rss_mb"] > 0 and row["windows_max_rss_mb"] > 0  # (two processes: no order)
