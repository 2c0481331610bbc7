"""Choose compression defaults: store size, ingest speed and read latency per zstd level and dictionary size.

    python benchmarks/bench_codec.py                 # the sample corpus, about a minute
    python benchmarks/bench_codec.py --corpus X.jsonl.zst --levels 3 5 --dict-sizes 0 114688

One JSON line per setting (in-process ingest, so interpreter start-up is excluded), then a markdown table.
The baseline in the same run is the source `.jsonl.zst` itself (one zstd stream of the JSON lines).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import pilestore
from pilestore.codec import CompressionSettings
from pilestore.ingest import ingest

SHARED = Path(os.environ.get("PILESTORE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def read_p50_us(store: pilestore.Store, n: int = 5000) -> float:
    rng = random.Random(0)
    indices = [rng.randrange(len(store)) for _ in range(n)]
    for i in indices:
        store[i]
    times = []
    for i in indices:
        t = time.perf_counter_ns()
        store[i]
        times.append(time.perf_counter_ns() - t)
    times.sort()
    return times[len(times) // 2] / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "sample.jsonl.zst")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 3, 5, 9])
    parser.add_argument("--dict-sizes", type=int, nargs="+", default=[0, 32 * 1024, 112 * 1024])
    args = parser.parse_args()
    source_bytes = args.corpus.stat().st_size
    rows = []
    with tempfile.TemporaryDirectory(prefix="pilestore-codec-") as tmp:
        for level in args.levels:
            for dict_size in args.dict_sizes:
                store_dir = Path(tmp) / f"l{level}-d{dict_size}.store"
                settings = CompressionSettings(level=level, small_level=None, dict_size=dict_size)  # level for all
                report = ingest([args.corpus], store_dir, settings=settings).as_dict()
                disk = sum(p.stat().st_size for p in store_dir.rglob("*") if p.is_file())
                row = {
                    "level": level,
                    "dict_size": dict_size,
                    "store_to_source": round(disk / source_bytes, 4),
                    "ingest_text_mb_per_s": report["text_mb_per_s"],
                    "read_p50_us": round(read_p50_us(pilestore.open(store_dir)), 2),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
                shutil.rmtree(store_dir)
    print("\n| level | dict size | store / source | ingest MB/s of text | random read p50 |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['level']} | {r['dict_size']:,} | {r['store_to_source']}x | {r['ingest_text_mb_per_s']} | "
            f"{r['read_p50_us']} us |"
        )


if __name__ == "__main__":
    main()
