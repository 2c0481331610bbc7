"""Scale on one machine (`pytest -m slow`): a synthetic Pile-format corpus of PILESTORE_SCALE_GB (default 10) GB
in 5 sources, generated here by ../shared/corpus/make_synthetic.py, ingests with 2 workers and tokenizes with 2
with every process under 2 GB of resident memory, and nothing lost: every generated document, per subset, is in
the store, and every stored document has its tokens. On 2 cores 10 GB takes ~50 minutes, nearly all of it
tokenizing (4.4 MB/s); PILESTORE_SCALE_TOKENIZE_GB=0.5 tokenizes a separate store of that size instead.
Throughput and the 1 -> 2 worker speedup are measured by benchmarks/bench_scale.py, not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import pilestore

from .conftest import SHARED

GB = float(os.environ.get("PILESTORE_SCALE_GB", "10"))
TOKENIZE_GB = float(os.environ["PILESTORE_SCALE_TOKENIZE_GB"]) if "PILESTORE_SCALE_TOKENIZE_GB" in os.environ else None
LIMIT_MB = 2048


def run(*args: str) -> int:
    """Run a pilestore command; the peak RSS in MB of the largest process of its tree (wait4 rusage)."""
    proc = subprocess.Popen([sys.executable, "-m", "pilestore", *args, "-q"], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, f"pilestore {' '.join(args)} exited {proc.returncode}"
    return usage.ru_maxrss // 1024


def generate(out: Path, mb: float, seed: int) -> dict:
    done = subprocess.run(
        [sys.executable, str(SHARED / "corpus" / "make_synthetic.py"), "--out", str(out), "--mb", str(mb),
         "--seed", str(seed)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stderr)


@pytest.mark.slow
def test_a_corpus_larger_than_memory_ingests_and_tokenizes_in_bounded_memory(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:  # two generator processes at a time
        summaries = list(pool.map(lambda k: generate(tmp_path / f"{k:02d}.jsonl.zst", GB * 1000 / 5, k), range(5)))
    sources = sorted(tmp_path.glob("*.jsonl.zst"))
    store = tmp_path / "s.store"
    ingest_rss = run("ingest", *map(str, sources), "--store", str(store), "--workers", "2", "--threads", "1")
    print(f"ingest of {GB} GB: peak RSS {ingest_rss} MB")
    assert ingest_rss < LIMIT_MB
    opened = pilestore.open(store)
    expected: dict[str, int] = {}
    for summary in summaries:
        for name, per in summary["per_subset"].items():
            expected[name] = expected.get(name, 0) + per["docs"]
    assert len(opened) == sum(s["docs"] for s in summaries)
    assert opened.subsets == expected

    tok_store = store
    if TOKENIZE_GB is not None:
        small = tmp_path / "tok" / "tok.jsonl.zst"
        small.parent.mkdir()
        generate(small, TOKENIZE_GB * 1000, 7)
        tok_store = tmp_path / "tok.store"
        run("ingest", str(small), "--store", str(tok_store))
    model = tmp_path / "tok.model"
    run("train-tokenizer", "--store", str(tok_store), "--vocab-size", "32000", "--sample-mb", "50", "--out", str(model))
    tokenize_rss = run("tokenize", "--store", str(tok_store), "--tokenizer", str(model), "--workers", "2")
    print(f"tokenize of {TOKENIZE_GB or GB} GB: peak RSS {tokenize_rss} MB")
    assert tokenize_rss < LIMIT_MB
    view = json.loads(next((tok_store / "tokens").glob("*/view.json")).read_text())
    assert view["documents"] == len(pilestore.open(tok_store)) and view["tokens"] > view["documents"]
