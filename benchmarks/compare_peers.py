"""pilestore side by side with the tools users would pick instead, on the same corpus, in one run.

  bash benchmarks/install_peers.sh                      # the peers, into .venv (see that script for why so)
  .venv/bin/python benchmarks/compare_peers.py          # sample corpus; ~10 minutes on 2 cores
  .venv/bin/python benchmarks/compare_peers.py --corpus 11.jsonl.zst --work /big/disk

Systems: pilestore (its defaults: level 5 for documents under 16 KiB, 3 for the rest; and, documents only,
pilestore-l5: the same at `--level 5`; pilestore-l3: at `--small-level 3`, level 3 for every document);
Hugging Face `datasets` (Arrow, save_to_disk / load_from_disk); MosaicML `streaming` (MDS, zstd-compressed
shards); `litdata` (optimize, zstd-compressed chunks); and the Megatron / nanoGPT approach, a flat `np.memmap`
(UTF-8 text + int64 offsets for documents, token ids for training).

Per system, each in its own process (a peer that is missing or fails is reported in the table, not hidden):
  build     the source .jsonl.zst to the system's format: seconds and MB/s of uncompressed JSON lines; every peer
            is fed by the same reader (zstd stream + stdlib json), pilestore by its own `ingest`
  size      bytes on disk, and the ratio to the source .jsonl.zst
  access    one random document's text: p50 / p99 over 20,000 random indices (seeded, the same for all),
            each timed alone, warm (the same indices read once untimed first)
  pass      every document once, in a shuffled order, with the system's own shuffled iteration where it has one
  loader    2048-token training samples (input_ids + labels) through a torch DataLoader with 1 and 2 workers,
            shuffled, batch 8: pilestore's train view (PileDataset + PileSampler + collate); the peers store the
            same token ids (sentencepiece, 32k BPE trained by pilestore) concatenated with [eod] and cut into
            2049-token blocks, as the Hugging Face `group_texts` recipe, MDS ndarray columns, litdata's
            TokensLoader and nanoGPT (random offsets into the flat file) do

Outputs: docs/compare_peers.jsonl (raw), docs/compare_peers.md (table, machine, versions) and
docs/compare_peers.png (chart); docs/benchmarks.md shows them.

Documents with lone UTF-16 surrogates (Arrow, MDS and litdata store UTF-8 only) are given to the peers with
U+FFFD in their place; the count is reported. pilestore keeps them exactly.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_store import du, json_bytes  # noqa: E402  (benchmarks/ is the script's folder)

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("PILESTORE_SHARED", HERE.parents[1] / "shared"))
SYSTEMS = ["pilestore", "pilestore-l5", "pilestore-l3", "datasets", "mds", "litdata", "memmap"]
PACKAGES = {"pilestore": "pilestore", "pilestore-l5": "pilestore", "pilestore-l3": "pilestore",
            "datasets": "datasets", "mds": "mosaicml-streaming", "litdata": "litdata", "memmap": "numpy"}  # fmt: skip
DOCS_ONLY = {"pilestore-l5", "pilestore-l3"}  # the token path is pilestore's: not run again for the loader
SEQ_LEN, BLOCK = 2048, 2049
ACCESS, BATCH, BATCHES = 20_000, 8, 400


def emit(**fields: Any) -> None:
    print("RESULT " + json.dumps(fields), flush=True)


def parsed_records(corpus: Path) -> Iterator[tuple[str, Any]]:
    """(text, meta) of every line that has a string text, parsed by the stdlib."""
    import zstandard

    with open(corpus, "rb") as fh:
        stream = io.TextIOWrapper(
            zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True), encoding="utf-8"
        )
        for line in stream:
            try:
                record = json.loads(line)
                text = record["text"]
            except (ValueError, KeyError, TypeError):
                continue  # pilestore skips (and counts) the same lines
            if isinstance(text, str):
                yield text, record.get("meta") or {}


def utf8(text: str) -> str:
    """Text as UTF-8-only stores can hold it: lone surrogates become U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def source_records(corpus: Path) -> Iterator[dict[str, Any]]:
    """The corpus's documents as the peers receive them: text (lone surrogates replaced) and meta as JSON."""
    for text, meta in parsed_records(corpus):
        yield {"text": utf8(text), "meta": json.dumps(meta)}


def timed_access(get: Callable[[int], str], indices: np.ndarray, budget_s: float) -> dict[str, float]:
    """Warm (the same documents read once untimed first), each read timed alone; a system too slow to read
    them all within budget_s (twice: warm-up and timed) is measured on the first ones it reached."""
    clock = time.perf_counter_ns
    deadline = clock() + budget_s * 1e9
    n = 0
    for i in indices:
        get(int(i))
        n += 1
        if clock() > deadline:
            break
    times = np.empty(n)
    deadline = clock() + budget_s * 1e9
    for k, i in enumerate(indices[:n]):
        started = clock()
        get(int(i))
        times[k] = clock() - started
        if started > deadline:
            times = times[: k + 1]
            break
    return {
        "p50_us": float(np.percentile(times, 50) / 1e3),
        "p99_us": float(np.percentile(times, 99) / 1e3),
        "n": len(times),
    }


# --- the document path: build, then random access and a shuffled pass ------------------------------------------


class Docs:
    """One system's document store: build(corpus, out); open(out); get(i) -> text; shuffled_pass() -> docs."""

    def build(self, corpus: Path, out: Path) -> None:
        raise NotImplementedError

    def open(self, out: Path) -> int:
        raise NotImplementedError

    def get(self, i: int) -> str:
        raise NotImplementedError

    def shuffled_pass(self, out: Path, n: int) -> int:
        order = np.random.default_rng(1).permutation(n)
        for i in order:
            self.get(int(i))
        return n

    def read_cache_bytes(self) -> int:
        return 0


class PilestoreDocs(Docs):
    """`pilestore ingest` with its defaults (level 5 for documents under 16 KiB, 3 for the rest)."""

    SETTINGS: dict[str, Any] = {}  # CompressionSettings fields other than the defaults

    def build(self, corpus: Path, out: Path) -> None:
        from pilestore.codec import CompressionSettings
        from pilestore.ingest import ingest

        ingest([corpus], out, settings=CompressionSettings(**self.SETTINGS))

    def open(self, out: Path) -> int:
        import pilestore

        self.store = pilestore.open(out)
        return len(self.store)

    def get(self, i: int) -> str:
        return self.store[i].text


class PilestoreLevel5Docs(PilestoreDocs):
    """`pilestore ingest --level 5`: level 5 for every document."""

    SETTINGS = {"level": 5}


class PilestoreLevel3Docs(PilestoreDocs):
    """`pilestore ingest --small-level 3`: level 3 for every document (the default before 2026-11-25)."""

    SETTINGS = {"small_level": None}


class HFDocs(Docs):
    def build(self, corpus: Path, out: Path) -> None:
        from datasets import Dataset, Features, Value

        cache = out.parent / "hf_cache"
        features = Features({"text": Value("string"), "meta": Value("string")})
        ds = Dataset.from_generator(source_records, gen_kwargs={"corpus": corpus}, features=features, cache_dir=cache)
        ds.save_to_disk(out)
        del ds
        shutil.rmtree(cache, ignore_errors=True)

    def open(self, out: Path) -> int:
        from datasets import load_from_disk

        self.ds = load_from_disk(str(out))
        return len(self.ds)

    def get(self, i: int) -> str:
        return self.ds[i]["text"]

    def shuffled_pass(self, out: Path, n: int) -> int:
        return sum(1 for _ in self.ds.shuffle(seed=1))  # the map-style shuffle: an indices mapping


def import_streaming() -> Any:
    """streaming.base without the package's __init__, which imports its vision datasets and so torchvision, for
    which no CPU build exists (installing it pulls a CUDA torch). Nothing of the text path is replaced."""
    import types

    if "streaming" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("mosaicml-streaming is not installed: run benchmarks/install_peers.sh")
        package = types.ModuleType("streaming")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["streaming"] = package
    import streaming.base

    return streaming.base


class StreamingDocs(Docs):
    """A peer read through its StreamingDataset, which keeps decompressed data in a local cache folder."""

    cache_name = ""

    def _dataset(self, out: Path, shuffle: bool) -> Any:
        raise NotImplementedError

    def open(self, out: Path) -> int:
        self.cache = out.parent / self.cache_name
        shutil.rmtree(self.cache, ignore_errors=True)
        self.ds = self._dataset(out, shuffle=False)
        return len(self.ds)

    def get(self, i: int) -> str:
        return self.ds[i]["text"]

    def shuffled_pass(self, out: Path, n: int) -> int:
        del self.ds  # MDS: one StreamingDataset per local folder at a time; the pass reuses the warm cache
        return sum(1 for _ in self._dataset(out, shuffle=True))

    def read_cache_bytes(self) -> int:
        return du(self.cache) if self.cache.exists() else 0


class MDSDocs(StreamingDocs):
    cache_name = "mds_cache"  # where MDS keeps the shards it decompressed for reading

    def build(self, corpus: Path, out: Path) -> None:
        base = import_streaming()
        columns = {"text": "str", "meta": "str"}
        with base.MDSWriter(out=str(out), columns=columns, compression="zstd", size_limit="64mb") as writer:
            for record in source_records(corpus):
                writer.write(record)

    def _dataset(self, out: Path, shuffle: bool) -> Any:
        base = import_streaming()
        base.util.clean_stale_shared_memory()
        return base.StreamingDataset(
            remote=str(out), local=str(self.cache), shuffle=shuffle, shuffle_seed=1, batch_size=1
        )


def _litdata_docs(corpus: str) -> Iterator[dict[str, Any]]:
    yield from source_records(Path(corpus))


class LitDocs(StreamingDocs):
    cache_name = "lit_cache"

    def build(self, corpus: Path, out: Path) -> None:
        import litdata

        litdata.optimize(
            fn=_litdata_docs, inputs=[str(corpus)], output_dir=str(out), chunk_bytes="64MB", num_workers=1,
            compression="zstd", verbose=False,
        )  # fmt: skip

    def _dataset(self, out: Path, shuffle: bool) -> Any:
        import litdata

        return litdata.StreamingDataset(str(out), cache_dir=str(self.cache), shuffle=shuffle, seed=1)


class MemmapDocs(Docs):
    def build(self, corpus: Path, out: Path) -> None:
        out.mkdir(parents=True)
        ends = [0]
        with open(out / "text.bin", "wb") as fh:
            for record in source_records(corpus):
                data = record["text"].encode()
                fh.write(data)
                ends.append(ends[-1] + len(data))
        np.save(out / "offsets.npy", np.asarray(ends, np.int64))

    def open(self, out: Path) -> int:
        self.text = np.memmap(out / "text.bin", dtype=np.uint8, mode="r")
        self.offsets = np.load(out / "offsets.npy", mmap_mode="r")
        return len(self.offsets) - 1

    def get(self, i: int) -> str:
        return self.text[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()


DOCS: dict[str, type[Docs]] = {
    "pilestore": PilestoreDocs, "pilestore-l5": PilestoreLevel5Docs, "pilestore-l3": PilestoreLevel3Docs,
    "datasets": HFDocs, "mds": MDSDocs,
    "litdata": LitDocs, "memmap": MemmapDocs,
}  # fmt: skip


def run_docs(system: str, corpus: Path, work: Path, budget_s: float = 60.0) -> None:
    impl = DOCS[system]()
    out = work / f"{system}.docs"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    impl.build(corpus, out)
    build_s = time.perf_counter() - started
    size = du(out)
    n = impl.open(out)
    indices = np.random.default_rng(0).integers(0, n, ACCESS)
    access = timed_access(impl.get, indices, budget_s)
    started = time.perf_counter()
    passed = impl.shuffled_pass(out, n)
    pass_s = time.perf_counter() - started
    emit(
        part="docs", system=system, docs=n, build_s=round(build_s, 2),
        build_mb_s=round(json_bytes(corpus) / build_s / 1e6, 2), bytes=size,
        ratio_to_source=round(size / corpus.stat().st_size, 3), access_p50_us=round(access["p50_us"], 1),
        access_p99_us=round(access["p99_us"], 1), access_n=access["n"], pass_docs=passed,
        pass_docs_s=round(passed / pass_s),
        read_cache_bytes=impl.read_cache_bytes(),
    )  # fmt: skip


# --- the token path: 2048-token samples through a DataLoader ----------------------------------------------------


def token_blocks(store_dir: Path) -> np.ndarray:
    """The view's tokens, each document followed by [eod], cut into 2049-token blocks (the tail dropped)."""
    import pilestore
    from pilestore.tokens import find_view

    view = find_view(pilestore.open(store_dir), None)
    parts = []
    for p in range(view.num_partitions):
        tokens = view.partition(p)
        ends = np.asarray(tokens.start, np.int64) + np.asarray(tokens.n_tokens, np.int64)
        parts.append(np.insert(np.asarray(tokens.tokens), ends, view.eod_id))
    flat = np.concatenate(parts)
    return flat[: len(flat) // BLOCK * BLOCK].reshape(-1, BLOCK)


def as_sample(x: Any) -> dict[str, Any]:
    x = torch.as_tensor(np.asarray(x, np.int64))
    return {"input_ids": x[:-1], "labels": x[1:]}


class HFTokens:
    def __init__(self, blocks: np.ndarray, out: Path) -> None:
        import pyarrow as pa
        from datasets import Dataset, load_from_disk

        column = pa.FixedSizeListArray.from_arrays(pa.array(blocks.reshape(-1)), BLOCK)
        Dataset(pa.table({"input_ids": column})).save_to_disk(str(out))
        self.ds = load_from_disk(str(out)).with_format("numpy")

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return as_sample(self.ds[i]["input_ids"])


class AsSamples(torch.utils.data.IterableDataset):
    """A peer's streaming dataset (it shuffles and shards over workers itself), its items as training samples."""

    def __init__(self, inner: Any, key: str | None = None) -> None:
        self.inner, self.key = inner, key

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self.inner:
            yield as_sample(item[self.key] if self.key else item)


def mds_tokens(blocks: np.ndarray, out: Path) -> Any:
    base = import_streaming()
    with base.MDSWriter(out=str(out), columns={"tokens": f"ndarray:{blocks.dtype.name}:{BLOCK}"}) as writer:
        for block in blocks:
            writer.write({"tokens": block})

    base.util.clean_stale_shared_memory()
    return AsSamples(base.StreamingDataset(local=str(out), shuffle=True, shuffle_seed=1, batch_size=BATCH), "tokens")


def _litdata_tokens(blocks_path: str) -> Iterator[Any]:
    for block in np.load(blocks_path, mmap_mode="r"):
        yield torch.from_numpy(np.array(block))


def lit_tokens(blocks: np.ndarray, out: Path) -> Any:
    import litdata
    from litdata.streaming.item_loader import TokensLoader

    source = out.parent / "blocks.npy"
    np.save(source, blocks)
    litdata.optimize(
        fn=_litdata_tokens, inputs=[str(source)], output_dir=str(out), chunk_size=BLOCK * 1024, num_workers=1,
        item_loader=TokensLoader(), verbose=False,
    )  # fmt: skip

    return AsSamples(
        litdata.StreamingDataset(str(out), item_loader=TokensLoader(block_size=BLOCK), shuffle=True, seed=1)
    )


class Epochs:
    """A loader's batches, epoch after epoch (a small corpus holds fewer samples than the run reads)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield from self.loader


def run_loader(system: str, store_dir: Path, work: Path) -> None:
    from bench_torch import MemmapWindows, rate
    from torch.utils.data import DataLoader

    out = work / f"{system}.tokens"
    shutil.rmtree(out, ignore_errors=True)
    samples = (BATCHES + 1) * BATCH
    options: dict[str, Any] = {"shuffle": True}  # the peers' streaming datasets shuffle and shard by themselves
    if system == "pilestore":
        import pilestore
        from pilestore.torch import PileDataset, PileSampler
        from pilestore.torch import collate as pile_collate

        ds: Any = PileDataset(pilestore.open(store_dir), "train", seq_len=SEQ_LEN, context=512)
        order = [i for _ in range(-(-samples // len(ds))) for i in PileSampler(ds, num_replicas=1, rank=0, seed=1)]
        options, size = {"sampler": order[:samples], "collate_fn": pile_collate}, du(ds._view.folder)
    else:
        blocks = token_blocks(store_dir)
        if system == "datasets":
            ds = HFTokens(blocks, out)
        elif system == "mds":
            ds, options = mds_tokens(blocks, out), {}
        elif system == "litdata":
            ds, options = lit_tokens(blocks, out), {}
        else:
            out.mkdir(parents=True)
            blocks.reshape(-1).tofile(out / "tokens.bin")
            ds = MemmapWindows(out / "tokens.bin", blocks.dtype.name, samples)
        size = du(out)
    for workers in (1, 2):
        samples_s, _ = rate(Epochs(DataLoader(ds, batch_size=BATCH, num_workers=workers, **options)), BATCHES)
        emit(part="loader", system=system, workers=workers, samples=BATCHES * BATCH,
             samples_s=round(samples_s), tokens_s=round(samples_s * SEQ_LEN), token_bytes=size)  # fmt: skip


# --- the driver ---------------------------------------------------------------------------------------------------


def run_child(system: str, part: str, corpus: Path, work: Path, store_dir: Path | None) -> list[dict[str, Any]]:
    command = [sys.executable, __file__, "--child", system, "--part", part, "--corpus", str(corpus),
               "--work", str(work)] + (["--store", str(store_dir)] if store_dir else [])  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    rows = [json.loads(x[7:]) for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    if result.returncode != 0 or not rows:
        lines = [x for x in result.stderr.strip().splitlines() if x.strip()] or [f"exit status {result.returncode}"]
        rows.append({"part": part, "system": system, "error": lines[-1][:300]})
        print(f"{system} {part}: FAILED: {lines[-1][:300]}", file=sys.stderr)
    else:
        print(f"{system} {part}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return rows


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "–" if value is None else format(value, spec)


def sampled(docs: dict[str, Any]) -> str:
    n = docs.get("access_n", ACCESS)
    return f" (first {n:,} only)" if n < ACCESS else ""


def median_loads(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (system, workers): the round with the median samples/s."""
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r["part"] == "loader" and "error" not in r:
            runs.setdefault((r["system"], r["workers"]), []).append(r)
    return {key: sorted(found, key=lambda r: r["samples_s"])[len(found) // 2] for key, found in runs.items()}


def table(rows: list[dict[str, Any]], source_bytes: int) -> str:
    docs = {r["system"]: r for r in rows if r["part"] == "docs" and "error" not in r}
    loads = median_loads(rows)
    lines = [
        "| system | build s | build MB/s | on disk MB | ÷ source .zst | access p50 µs | p99 µs | shuffled pass docs/s "
        "| loader 1 worker samples/s | 2 workers | tokens on disk MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system in [s for s in SYSTEMS if any(r["system"] == s for r in rows)]:  # those run, in a fixed order
        d, one, two = docs.get(system, {}), loads.get((system, 1), {}), loads.get((system, 2), {})
        failed = sorted({r["error"] for r in rows if r["system"] == system and "error" in r})
        tokens = one.get("token_bytes")
        lines.append(
            f"| {system} | {fmt(d.get('build_s'), '.1f')} | {fmt(d.get('build_mb_s'), '.1f')} | "
            f"{fmt(d['bytes'] / 1e6 if d else None, '.1f')} | {fmt(d.get('ratio_to_source'), '.2f')} | "
            f"{fmt(d.get('access_p50_us'), '.1f')}{sampled(d)} | {fmt(d.get('access_p99_us'), '.1f')} | "
            f"{fmt(d.get('pass_docs_s'))} | {fmt(one.get('samples_s'))} | {fmt(two.get('samples_s'))} | "
            f"{fmt(tokens / 1e6 if tokens else None, '.1f')} |"
            + (f" **failed**: `{'; '.join(failed)}`" if failed else "")
        )
    lines.append(f"\nSource: {source_bytes / 1e6:.1f} MB `.jsonl.zst`.")
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = {r["system"]: r for r in rows if r["part"] == "docs" and "error" not in r}
    loads = median_loads(rows)
    panels = [
        ("on disk, MB (lower is better)", {s: r["bytes"] / 1e6 for s, r in docs.items()}),
        ("random access p50, µs (lower is better)", {s: r["access_p50_us"] for s, r in docs.items()}),
        ("shuffled pass, docs/s", {s: r["pass_docs_s"] for s, r in docs.items()}),
        ("DataLoader, 1 worker, samples/s", {s: r["samples_s"] for (s, w), r in loads.items() if w == 1}),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, (title, values) in zip(axes, panels, strict=True):
        names = [s for s in SYSTEMS if s in values]
        if not names:  # a part that was not run (--parts) or failed for every system
            ax.set_title(title, fontsize=10)
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        bars = ax.bar(names, [values[s] for s in names], color=["#d62728" if s.startswith("pilestore") else "#7f7f7f"
                                                                for s in names])  # fmt: skip
        ax.bar_label(bars, fmt=lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.1f}", fontsize=8)
        ax.set_title(title, fontsize=10)
        if "access" in title:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "sample.jsonl.zst")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--parts", default="docs,loader")
    parser.add_argument("--rounds", type=int, default=3, help="loader runs per system, interleaved (median shown)")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs", help="where the table and chart go")
    parser.add_argument("--report-only", action="store_true", help="redo the table and chart from --out's jsonl")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.part == "docs":
            run_docs(args.child, args.corpus, args.work)
        else:
            run_loader(args.child, args.store, args.work)
        return
    if args.report_only:
        print(report(args.out))
        return
    if not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus}: no such file (a Pile-format .jsonl.zst)")

    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="peers-"))
    work.mkdir(parents=True, exist_ok=True)
    systems, parts = args.systems.split(","), args.parts.split(",")
    for name, given, known in (("system", systems, SYSTEMS), ("part", parts, ["docs", "loader"])):
        if unknown := sorted(set(given) - set(known)):
            parser.error(f"unknown {name} {', '.join(unknown)}: choose from {', '.join(known)}")
    rows: list[dict[str, Any]] = []
    if "docs" in parts:
        for system in systems:
            rows += run_child(system, "docs", args.corpus, work, None)
    if "loader" in parts:
        from bench_torch import prepare

        store_dir = prepare(work, args.corpus, vocab_size=32_000)  # ingest, train a 32k BPE, tokenize, index
        for round_ in range(args.rounds):  # systems interleaved, the median per system: the machine is noisy
            for system in [s for s in systems if s not in DOCS_ONLY]:
                rows += [{**r, "round": round_} for r in run_child(system, "loader", args.corpus, work, store_dir)]
    altered = sum(1 for text, _ in parsed_records(args.corpus) if utf8(text) != text)
    meta = {
        "part": "meta",
        "command": " ".join(["python", "benchmarks/compare_peers.py", *sys.argv[1:]]),
        "corpus": args.corpus.name,
        "source_bytes": args.corpus.stat().st_size,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()}",
        "versions": {PACKAGES[s]: version_of(PACKAGES[s]) for s in systems} | {"torch": version_of("torch")},
        "rounds": args.rounds,
        "docs_with_replacement_chars_for_peers": altered,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "compare_peers.jsonl", "w") as fh:
        for row in [meta, *rows]:
            fh.write(json.dumps(row) + "\n")
    print(report(args.out))


def report(out: Path) -> str:
    """compare_peers.md and compare_peers.png from compare_peers.jsonl in `out`; the table."""
    raw = out / "compare_peers.jsonl"
    if not raw.is_file():
        raise SystemExit(f"{raw}: no results here to report; run compare_peers.py with --out {out} first")
    meta, *rows = [json.loads(line) for line in raw.read_text().splitlines()]
    text = table(rows, meta["source_bytes"])
    chart(rows, out / "compare_peers.png")
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    caches = [f"{r['system']} {r['read_cache_bytes'] / 1e6:.1f} MB" for r in rows if r.get("read_cache_bytes")]
    (out / "compare_peers.md").write_text(
        f"`{meta['command']}` on `{meta['corpus']}`\n\nMachine: {meta['machine']}. Versions: {versions}.\n\n"
        f"{text}\n\nLoader columns: the median of {meta['rounds']} rounds, systems interleaved. "
        + (f"Reading also wrote a cache of decompressed shards: {', '.join(caches)}. " if caches else "")
        + f"{meta['docs_with_replacement_chars_for_peers']} documents reached the peers with U+FFFD in place of "
        "lone surrogates (pilestore stores them exactly).\n"
    )
    return text


def version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
