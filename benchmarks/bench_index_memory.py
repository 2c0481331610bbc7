"""Memory of a sample index build (the end of `pilestore tokenize` and `pilestore index`), per span, next to its
baselines in the same run.

    python benchmarks/bench_index_memory.py                       # 1.5M documents, ~2 minutes
    python benchmarks/bench_index_memory.py --docs 10000000       # closer to a Pile shard
    python benchmarks/bench_index_memory.py --pythonpath OTHER     # the builds run with another checkout's code

A real store of --docs tiny documents (five subsets) gets a synthetic token view: Pile-like token counts per
document (lognormal, median ~665 tokens), sparse token and byte-length files (zeros, nothing stored). Each
measurement runs in a fresh process:

  windows   the kernels alone (eval_view / train_view): the Spans that any build of the index holds
  build     build_index: windows, then the three Arrow files written and checked
  files     the index files' bytes on disk: what a writer that assembles them in memory holds at least

For each: peak of the memory numpy allocates (tracemalloc), and the process's peak resident set (ru_maxrss,
which also counts pages of mapped files that were read), in bytes per span.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from synthetic_views import write_zero_tokens

SEQ_LEN, CONTEXT = 2048, 512
SUBSETS = ["ArXiv", "Github", "Pile-CC", "PubMed Central", "Wikipedia (en)"]


def make_store(folder: Path, docs: int) -> Path:
    """A store of `docs` one-character documents and a synthetic token view of Pile-like lengths."""
    import pyarrow as pa

    from pilestore.index import arrow_batch
    from pilestore.ingest import ingest
    from pilestore.manifest import write_sealed

    store = folder / "s.store"
    view = store / "tokens" / "synthetic-000000000000"
    if (view / "view.json").exists():
        return store
    source = folder / "docs.jsonl"
    with open(source, "w") as fh:
        for i in range(docs):
            fh.write(json.dumps({"text": "x", "meta": {"pile_set_name": SUBSETS[i % len(SUBSETS)]}}) + "\n")
    ingest([source], store)
    source.unlink()
    rng = np.random.default_rng(0)
    n_tokens = np.maximum(1, rng.lognormal(6.5, 1.6, docs)).astype(np.int64)
    start = np.cumsum(n_tokens) - n_tokens
    total = int(n_tokens.sum())
    view.mkdir(parents=True)
    write_zero_tokens(view, total)
    batch = arrow_batch({"start": start, "n_tokens": n_tokens, "n_bytes": np.zeros(docs, np.int64)})
    with open(view / "p00000.arrow", "wb") as fh, pa.ipc.new_file(fh, batch.schema) as writer:
        writer.write_batch(batch)
    meta = {"tokenizer": {"file": "synthetic", "sha256": "0" * 64, "vocab_size": 32000, "eod_id": 2},
            "dtype": "uint16", "documents": docs, "tokens": total, "bytes": 0,
            "partitions": [{"partition": 0, "documents": docs, "tokens": total, "bytes": 0}]}  # fmt: skip
    write_sealed(view / "view.json", meta)
    return store


def child(store_dir: Path, kind: str, what: str) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import pilestore
    from pilestore.indexes import build_index
    from pilestore.samples import IndexShape
    from pilestore.tokens import TokenView
    from pilestore.windows import eval_view, train_view

    store = pilestore.open(store_dir)
    view = TokenView(next((store_dir / "tokens").iterdir()))
    lengths = view.doc_lengths()
    build = eval_view if kind == "eval" else train_view
    build(lengths[:1000], SEQ_LEN, CONTEXT)  # numba's kernels loaded (their memory is not the build's)
    shape = IndexShape(kind, SEQ_LEN, CONTEXT, None if kind == "eval" else "bestfit")
    tracemalloc.start()
    started = time.perf_counter()
    if what == "windows":
        spans = len(build(lengths, SEQ_LEN, CONTEXT).doc)
        files = 0
    else:
        info = build_index(view, store, shape)
        spans = info["spans"]
        files = sum((view.folder / "samples" / name).stat().st_size for name in info["sha256"])
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"kind": kind, "what": what, "spans": spans, "seconds": round(seconds, 2),
                      "numpy_peak_bytes": peak, "max_rss_bytes": rss, "file_bytes": files}))  # fmt: skip


def run_child(store: Path, kind: str, what: str, pythonpath: str | None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, what, "--store", str(store)], env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"{kind} {what} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1_500_000)
    parser.add_argument("--work", type=Path, help="keep the synthetic store here (reused by later runs)")
    parser.add_argument("--pythonpath", help="run the builds with this PYTHONPATH (another checkout's code)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "WHAT"), help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.store, *args.child)
        return
    with tempfile.TemporaryDirectory(prefix="pilestore-index-memory-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = make_store(work, args.docs)
        rows = []
        for kind in ("eval", "train"):
            windows = run_child(store, kind, "windows", args.pythonpath)
            build = run_child(store, kind, "build", args.pythonpath)
            n = build["spans"]
            row = {
                "section": "index_memory", "kind": kind, "docs": args.docs, "spans": n,
                "windows_numpy_peak_per_span": round(windows["numpy_peak_bytes"] / n, 1),
                "build_numpy_peak_per_span": round(build["numpy_peak_bytes"] / n, 1),
                "files_per_span": round(build["file_bytes"] / n, 1),
                "windows_max_rss_mb": round(windows["max_rss_bytes"] / 2**20),
                "build_max_rss_mb": round(build["max_rss_bytes"] / 2**20),
                "build_seconds": build["seconds"], "pythonpath": args.pythonpath,
            }  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| view | spans | windows alone: numpy peak B/span | build: numpy peak B/span | index files B/span | "
          "build peak RSS MB (windows alone) | build s |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['kind']} | {r['spans']:,} | {r['windows_numpy_peak_per_span']} | {r['build_numpy_peak_per_span']} "
              f"| {r['files_per_span']} | {r['build_max_rss_mb']:,} ({r['windows_max_rss_mb']:,}) | "
              f"{r['build_seconds']} |")  # fmt: skip


if __name__ == "__main__":
    main()
