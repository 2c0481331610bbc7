"""benchmarks/bench_torch.py's synthetic stores (its memory and first-batch parts) stay readable by the current
reader: the index and view descriptions it writes by hand must carry what the reader checks (they once lacked
the partitions an index was built for, and the benchmark failed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pilestore

from .conftest import ROOT


def test_the_synthetic_store_of_bench_torch_opens_as_a_dataset(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_torch
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from pilestore.torch import PileDataset

    n = 5000
    ds = PileDataset(pilestore.open(bench_torch.synthetic_store(tmp_path, n)), "eval", seq_len=2048, context=512)
    assert len(ds) == n
    batch = ds.__getitems__([0, n // 2, n - 1]).collated
    assert tuple(batch["input_ids"].shape) == (3, 2048) and int((batch["labels"] != -100).sum()) > 0
