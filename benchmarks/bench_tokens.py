"""Token-side benchmarks, each next to its baseline in the same run.

  python benchmarks/bench_tokens.py                 # sample corpus; ~2 minutes
  python benchmarks/bench_tokens.py --docs 210000000  # a Pile-sized index (needs ~20 GB of memory)
  python benchmarks/bench_tokens.py --store S         # only the index part, on a store tokenized before

tokenize  pilestore tokenize with 1 and 2 threads vs a bare sentencepiece encode loop over the same texts
          (ids only, whole documents, batches of 512, 1 and 2 threads): MB/s of text, tokens/s
index     eval + train views from document lengths: numba kernels vs a plain Python implementation of the
          same views (on a subset), and windows/s of the kernels on --docs synthetic Pile-shaped lengths
packing   padding fraction and samples per packing strategy on the sample corpus
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

import pilestore
from pilestore.ingest import ingest
from pilestore.tokenizer import Tokenizer, TrainSettings, for_tokenizer, train_tokenizer
from pilestore.tokens import TokenView, tokenize
from pilestore.windows import PARALLEL_DOCS, eval_view, train_view

SHARED = Path(os.environ.get("PILESTORE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def emit(section: str, **fields: object) -> None:
    print(json.dumps({"section": section, **fields}), flush=True)


def python_windows(lengths: list[int], seq_len: int, context: int, train: bool) -> list[tuple[int, int, int, int]]:
    """The same windows as windows.py, in plain Python (the baseline the kernels are compared with)."""
    pred = seq_len - context + 1
    out = []
    for d, n in enumerate(lengths):
        if n == 0:
            continue
        first = min(seq_len, n)
        out.append((d, 0, 0, first))
        done = first
        while done < n:
            w = min(n - done, pred)
            c = context if train else seq_len + 1 - w
            out.append((d, done - c, c, w))
            done += w
    return out


def python_best_fit(sizes: list[int], capacity: int) -> list[int]:
    """Best-fit decreasing with a sorted list of (room, bin): the plain-Python baseline."""
    import bisect

    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    rooms: list[tuple[int, int]] = []
    bin_of = [0] * len(sizes)
    n_bins = 0
    for i in order:
        k = bisect.bisect_left(rooms, (sizes[i], -1))
        if k < len(rooms):
            room, b = rooms.pop(k)
        else:
            room, b = capacity, n_bins
            n_bins += 1
        bin_of[i] = b
        if room - sizes[i] > 0:
            bisect.insort(rooms, (room - sizes[i], b))
    return bin_of


def bench_tokenize(store: pilestore.Store, model: Path) -> None:
    sp_tok = Tokenizer(model)
    texts = [for_tokenizer(d.text) for d in store]
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    for threads in (1, 2):
        started = time.perf_counter()
        tokens = 0
        for i in range(0, len(texts), 512):
            tokens += sum(map(len, sp_tok._sp.encode(texts[i : i + 512], num_threads=threads)))  # noqa: SLF001
        bare = time.perf_counter() - started
        shutil.rmtree(store.path / "tokens", ignore_errors=True)
        started = time.perf_counter()
        result = tokenize(store, model, threads=threads)
        ours = time.perf_counter() - started
        emit(
            "tokenize",
            threads=threads,
            text_mb=round(text_bytes / 1e6, 1),
            pilestore_mb_per_s=round(text_bytes / 1e6 / ours, 2),
            pilestore_tokens_per_s=int(result["tokens"] / ours),
            bare_sentencepiece_mb_per_s=round(text_bytes / 1e6 / bare, 2),
            bare_tokens_per_s=int(tokens / bare),
            overhead=round(ours / bare - 1, 3),
        )


def first_touch_seconds(nbytes: int) -> float:
    """Writing nbytes of fresh (never touched) memory: the floor for building an index of that size here."""
    import mmap

    started = time.perf_counter()
    with mmap.mmap(-1, nbytes) as region:
        np.frombuffer(region, dtype=np.uint8)[::4096] = 1  # one write per page faults every page in
    return time.perf_counter() - started


def bench_index(view: TokenView, docs: int, rounds: int) -> None:
    rng = np.random.default_rng(0)
    real = view.doc_lengths()
    subset = rng.choice(real, 200_000)  # real document lengths of the sample corpus, resampled
    for kind in ("eval", "train"):
        started = time.perf_counter()
        spans = python_windows(subset.tolist(), 2048, 512, kind == "train")
        if kind == "train":
            python_best_fit([c + t + (s == 0 and c == 0) for _, s, c, t in spans], 2049)
        py = time.perf_counter() - started
        build = eval_view if kind == "eval" else train_view
        build(subset, 2048, 512)  # compiled (cached on disk) and memory warmed
        started = time.perf_counter()
        result = build(subset, 2048, 512)
        nb = time.perf_counter() - started
        emit(
            "index_vs_python",
            kind=kind,
            docs=len(subset),
            windows=len(result.doc),
            numba_s=round(nb, 4),
            python_s=round(py, 3),
            speedup=round(py / nb, 1),
        )
    big = np.maximum(0, rng.lognormal(6.5, 1.6, docs)).astype(np.int64)  # Pile-like: median ~700 tokens
    for kind, build in (("eval", eval_view), ("train", train_view)):
        build(big[: 2 * PARALLEL_DOCS], 2048, 512)  # the multi-threaded kernels compiled and their threads started
        timings = []
        for _ in range(1 + rounds):  # cold: the first build in this process; then warm (median and best)
            started = time.perf_counter()
            result = build(big, 2048, 512)
            timings.append(time.perf_counter() - started)
            out_bytes = sum(getattr(result, f).nbytes for f in ("doc", "eod", "start", "context", "target"))
            del result
        touch = first_touch_seconds(out_bytes)
        windows = int(_count(big, kind))
        warm = sorted(timings[1:])
        emit(
            "index_scale",
            kind=kind,
            docs=docs,
            windows=windows,
            threads=numba.get_num_threads(),
            cold_s=round(timings[0], 3),
            warm_s=round(float(np.median(warm)), 3),
            best_s=round(warm[0], 3),
            cold_windows_per_s=int(windows / timings[0]),
            warm_windows_per_s=int(windows / np.median(warm)),
            best_windows_per_s=int(windows / warm[0]),
            all_warm_s=[round(t, 3) for t in timings[1:]],
            output_mb=round(out_bytes / 1e6),
            first_touch_of_output_s=round(touch, 3),
        )
    bench_phases(big, rounds)


def bench_phases(lengths: np.ndarray, rounds: int) -> None:
    """Each kernel of the best-fit train view timed alone (median of `rounds`): where its time goes."""
    from pilestore import windows as w

    capacity = 2048 + 1
    timings: dict[str, list[float]] = {}
    for _ in range(rounds):
        started = time.perf_counter()
        pieces = w.windows(lengths, 2048, 512, tails_keep_context=True)
        marks = [("windows", time.perf_counter())]
        n, bounds = len(pieces.doc), w._chunks(len(pieces.doc))
        counts = w._size_counts(pieces.eod, pieces.context, pieces.target, capacity, bounds)
        count = counts.sum(axis=0)
        n_full = int(count[0])
        marks.append(("size_counts", time.perf_counter()))
        by_sample, order = np.empty(n, w._positions(n)), np.empty(n - n_full, w._positions(n))
        w._largest_first(pieces.eod, pieces.context, pieces.target, capacity, bounds, counts, by_sample, order)
        marks.append(("counting_sort", time.perf_counter()))
        bin_of = np.empty(n - n_full, w._positions(n))
        n_bins = w._best_fit(count, capacity, np.empty(n - n_full, w._positions(n)), bin_of)
        marks.append(("best_fit_search", time.perf_counter()))
        w._group_by_bin(order, bin_of, by_sample, np.empty(n_full + n_bins + 1, np.int64))
        marks.append(("group_by_sample", time.perf_counter()))
        for name, at in marks:
            timings.setdefault(name, []).append(at - started)
            started = at
        del pieces, by_sample, order, bin_of
    phases = {name: round(float(np.median(t)), 3) for name, t in timings.items()}
    emit("index_phases", kind="train", docs=len(lengths), rounds=rounds, median_s=phases, total_s=sum(phases.values()))


def _count(lengths: np.ndarray, kind: str) -> int:
    from pilestore.windows import _count_windows

    return _count_windows(lengths, 2048, 512)


def bench_packing(view: TokenView) -> None:
    lengths = view.doc_lengths()
    for seq_len, context in ((2048, 512), (1024, 256)):
        for packing in ("bestfit", "greedy"):
            spans = train_view(lengths, seq_len, context, packing)
            used = spans.sample_tokens().sum()
            several = int((np.bincount(spans.doc) > 1).sum())
            emit(
                "packing",
                seq_len=seq_len,
                context=context,
                packing=packing,
                samples=spans.num_samples,
                padding_fraction=round(1 - used / (spans.num_samples * (seq_len + 1)), 5),
                documents_truncated=0,
                documents_in_several_windows=several,
                documents=int((lengths > 0).sum()),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "sample.jsonl.zst")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--docs", type=int, default=10_000_000, help="documents of the synthetic index (scale)")
    parser.add_argument("--rounds", type=int, default=5, help="warm builds of the synthetic index (median, best)")
    parser.add_argument("--store", type=Path, help="an already tokenized store: only the index part runs on it")
    args = parser.parse_args()
    if args.store:
        bench_index(TokenView(next((args.store / "tokens").iterdir())), args.docs, args.rounds)
        return
    with tempfile.TemporaryDirectory(prefix="pilestore-tokens-") as tmp:
        store_dir = Path(tmp) / "s.store"
        ingest([args.corpus], store_dir)
        store = pilestore.open(store_dir)
        model = Path(tmp) / "tok.model"
        started = time.perf_counter()
        train_tokenizer(store, model, TrainSettings(sample_mb=20, options={"vocab_size": args.vocab_size}))
        emit(
            "train_tokenizer", vocab_size=args.vocab_size, sample_mb=20, seconds=round(time.perf_counter() - started, 1)
        )
        bench_tokenize(store, model)
        view = TokenView(next((store_dir / "tokens").iterdir()))
        bench_packing(view)
        bench_index(view, args.docs, args.rounds)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus", file=sys.stderr)


if __name__ == "__main__":
    main()
