"""benchmarks/bench_store.py's ingest baseline: the zstd pipeline it times must really read the source."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    from bench_store import run_measured, zstd_pipeline
finally:
    sys.path.remove(str(ROOT / "benchmarks"))


def test_the_zstd_baseline_reads_a_linked_source_and_fails_on_a_missing_one(sample_path: Path, tmp_path: Path) -> None:
    """zstd skips symbolic links: the baseline of a linked source once took 0 s and its ratio printed 0.0."""
    link = tmp_path / "linked.jsonl.zst"
    link.symlink_to(sample_path)
    _, direct_cpu, _ = run_measured(zstd_pipeline(sample_path))
    _, linked_cpu, _ = run_measured(zstd_pipeline(link))
    assert linked_cpu > 0.3 * direct_cpu > 0  # 38 MB of JSON lines decompressed and compressed again
    with pytest.raises(RuntimeError, match="failed with status"):
        run_measured(zstd_pipeline(tmp_path / "missing.jsonl.zst"))
