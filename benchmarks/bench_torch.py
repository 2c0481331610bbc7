"""Torch-side benchmarks, each next to its baseline in the same run.

  python benchmarks/bench_torch.py                         # all parts; ~5 minutes and ~16 GB of disk
  python benchmarks/bench_torch.py --parts loader --work W  # reuse a store prepared in W by an earlier run

in_process   ds[i] per second in one process, next to the same number of np.memmap windows read in a plain loop;
             and batches of --batch read at once (ds.__getitems__, what a DataLoader calls), next to the same
             batches of memmap windows stacked into one array
loader       samples/s and tokens/s at seq_len 2048, shuffled, from a DataLoader with 1 worker (and 2), over the
             sample corpus tokenized with a 32k BPE: PileDataset + PileSampler + collate, next to the same
             DataLoader reading the same number of 2049-token windows at random offsets of a plain np.memmap of
             the same token file (the nanoGPT / Megatron way), item by item and a batch at a time; and
             pilestore item by item (without __getitems__, as before it had one); and pilestore lean: only
             input_ids and labels (fields=...), in int64 and in int32; and
             pilestore's batches pickled by value through the worker's pipe, as before 2026-11-24
             (*_by_value; now a batch is copied into a slot of the worker's shared-memory ring); and
             no_read: batches of the lean int32 shape sent the same way with nothing read (the ceiling the
             DataLoader and the transport leave at this batch size, with no dataset at all); and the
             trainer process's CPU time per batch (unpickling, DataLoader bookkeeping) for each. Worker
             loaders use --prefetch (prefetch_factor, default 4); pilestore lean int32 also at torch's
             default of 2 (*_prefetch2). With CUDA: also batches copied to the GPU.
memory       resident memory of a DataLoader worker after 20k random samples, for a 10M- and a 100M-sample
             index (synthetic: one long document, the real index format, sparse token files)
             and, in a fresh process, the time to open PileDataset and ds[i] latency at each size
first_batch  a fresh process: imports, then PileDataset + PileSampler + DataLoader(1 worker) to the first batch,
             on the 10M-sample index
partitions   batched lean int32 reads in one process from the sample corpus as one partition and as --shards
             partitions (the corpus dealt into shards, ingested as many sources, tokenized with the same model):
             what it costs that a batch's samples come from many token files (a Pile store has 30)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from synthetic_views import write_zero_tokens

SHARED = Path(os.environ.get("PILESTORE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SEQ_LEN, CONTEXT = 2048, 512
LEAN = ("input_ids", "labels")  # the fields a nanoGPT-style trainer uses (PileDataset(fields=...))


def emit(section: str, **fields: object) -> None:
    print(json.dumps({"section": section, **fields}), flush=True)


def prepare(work: Path, corpus: Path, vocab_size: int) -> Path:
    """The sample corpus ingested, a BPE trained on it, tokenized with seq_len 2048 indexes (kept in work/)."""
    import pilestore
    from pilestore.ingest import ingest
    from pilestore.tokenizer import TrainSettings, train_tokenizer

    store_dir = work / "sample.store"
    if (store_dir / "tokens").exists():
        return store_dir
    ingest([corpus], store_dir)
    model = work / "tok.model"
    train_tokenizer(pilestore.open(store_dir), model, TrainSettings(sample_mb=10, options={"vocab_size": vocab_size}))
    return tokenized(store_dir, model)


def tokenized(store_dir: Path, model: Path) -> Path:
    """The store tokenized with `model`, with the train view's seq_len 2048 index."""
    import pilestore
    from pilestore.indexes import build_indexes
    from pilestore.tokens import TokenView, tokenize

    result = tokenize(pilestore.open(store_dir), model, threads=os.cpu_count() or 1)
    build_indexes(TokenView(Path(result["view"])), pilestore.open(store_dir), SEQ_LEN, CONTEXT, "bestfit")
    return store_dir


class MemmapWindows:
    """The baseline: window i is tokens[offset_i : offset_i + seq_len + 1] of one flat np.memmap."""

    def __init__(self, path: Path, dtype: str, n: int, seed: int = 0) -> None:
        self.path, self.dtype, self.n = path, dtype, n
        size = os.path.getsize(path) // np.dtype(dtype).itemsize
        self.offsets = np.random.default_rng(seed).integers(0, size - SEQ_LEN - 1, n)
        self.tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        import torch

        if self.tokens is None:
            self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        x = torch.from_numpy(self.tokens[self.offsets[i] : self.offsets[i] + SEQ_LEN + 1].astype(np.int64))
        return {"input_ids": x[:-1], "labels": x[1:]}


class MemmapBatches(MemmapWindows):
    """The baseline read a batch at a time (DataLoader calls __getitems__): windows stacked into one int64
    buffer (in shared memory in a worker), as PileDataset.__getitems__ does; `passthrough` collates it."""

    def __getitems__(self, indices: list[int]) -> dict:
        import torch

        if self.tokens is None:
            self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        buffer = torch.empty(len(indices), SEQ_LEN + 1, dtype=torch.int64)
        if torch.utils.data.get_worker_info() is not None:
            buffer.share_memory_()
        out = buffer.numpy()
        for k, i in enumerate(indices):
            out[k] = self.tokens[self.offsets[i] : self.offsets[i] + SEQ_LEN + 1]
        return {"input_ids": buffer[:, :-1], "labels": buffer[:, 1:]}


def passthrough(batch: dict) -> dict:
    return batch


class PerItem:
    """A dataset seen through __getitem__ only (no __getitems__): how DataLoader read PileDataset before."""

    def __init__(self, ds) -> None:  # noqa: ANN001
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return self.ds[i]


class ByValueBatches(PerItem):
    """pilestore's batched reads as a worker sent them before 2026-11-24: pickled by value through the worker's
    pipe; they now travel through a shared-memory ring of slots (pilestore.ring) and only a slot is named."""

    def __getitems__(self, positions: list[int]):  # noqa: ANN204
        from pilestore.torch import Batch

        batch = self.ds.__getitems__(positions)
        by_value = _by_value_class()(batch.collated)
        by_value._buffer, by_value._layout = batch.collated._buffer, batch.collated._layout
        return Batch(by_value)


class NoReadBatches:
    """The ceiling of a DataLoader worker at this batch shape: a lean int32 batch of the same size built in a slot
    of the worker's ring and sent as pilestore's batches are, with nothing read into it (one byte a page
    written). What the DataLoader's own per-batch work and the transport cost, with no dataset at all."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, positions: list[int]):  # noqa: ANN204
        import torch

        from pilestore.samples import batch_layout
        from pilestore.torch import Batch, _batch_buffer, _packed

        size, layout = batch_layout(len(positions), SEQ_LEN, {}, LEAN)
        buffer = _batch_buffer(size, torch.int32)
        buffer.numpy()[::1024] = 1
        return Batch(_packed(buffer, layout))


@functools.cache
def _by_value_class():  # noqa: ANN202
    from pilestore.torch import Fields

    class ByValue(Fields):
        """A Fields that ForkingPickler does not send through the ring (its reducer is registered for Fields
        exactly): it pickles by value, as Fields.__reduce__ does."""

    return ByValue


def rate(loader, batches: int, device: str | None = None) -> tuple[float, float]:  # noqa: ANN001
    """Samples per second over `batches` batches after the first, and the CPU seconds per batch this (the
    trainer's) process spent, its DataLoader threads included. The loop only takes each batch (and copies it
    to the GPU where there is one): counting its targets here cost the trainer's process more CPU than the
    DataLoader itself at batches of 128 (0.5x the samples/s on this 2-core VM), so targets are counted apart."""
    it = iter(loader)
    first = next(it)
    sync = None
    if device:
        import torch

        sync = torch.cuda.synchronize
        first["input_ids"].to(device, non_blocking=True).long()  # int32 batches widened on the GPU
    started, cpu, samples = time.perf_counter(), time.process_time(), 0
    for _ in range(batches):
        batch = next(it)
        if device:
            batch["input_ids"].to(device, non_blocking=True).long()
            batch["labels"].to(device, non_blocking=True).long()
        samples += len(batch["input_ids"])
    if sync is not None:
        sync()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return samples / elapsed, cpu / batches


def _rate(ds, order: list[int]) -> float:  # noqa: ANN001
    started = time.perf_counter()
    for i in order:
        ds[i]
    return len(order) / (time.perf_counter() - started)


def _unchecked_rate(ds, order: list[int]) -> float:  # noqa: ANN001
    """ds[i] per second with the read-time checks (token block and sample record checksums) switched off:
    what they cost. Benchmark-only patching; pilestore itself always checks."""
    from pilestore import samples, tokens

    record_ok, read = samples._record_ok, tokens.PartitionTokens.read
    samples._record_ok = lambda *args: True
    tokens.PartitionTokens.read = lambda self, begin, end: self.tokens[begin:end]
    try:
        return _rate(ds, order)
    finally:
        samples._record_ok, tokens.PartitionTokens.read = record_ok, read


def _batched_rate(read, order: list[int], batch: int) -> float:  # noqa: ANN001
    started = time.perf_counter()
    for k in range(0, len(order), batch):
        read(order[k : k + batch])
    return len(order) / (time.perf_counter() - started)


def bench_loader(store_dir: Path, batch: int, batches: int, rounds: int, prefetch: int = 4) -> None:
    import torch
    from torch.utils.data import DataLoader

    import pilestore
    from pilestore.torch import PileDataset, PileSampler, collate

    store = pilestore.open(store_dir)
    ds = PileDataset(store, "train", seq_len=SEQ_LEN, context=CONTEXT)
    lean = PileDataset(store, "train", seq_len=SEQ_LEN, context=CONTEXT, fields=LEAN)  # what nanoGPT reads
    lean32 = PileDataset(store, "train", seq_len=SEQ_LEN, context=CONTEXT, fields=LEAN, dtype=torch.int32)
    part = ds._view.folder / "p00000.tokens"
    n = batches * batch
    order = np.random.default_rng(2).integers(0, len(ds), n).tolist()
    windows = MemmapBatches(part, ds._view.dtype.name, n)
    started = time.perf_counter()
    for i in range(n):
        windows[i]
    loop_rate = n / (time.perf_counter() - started)
    memmap_batched = max(_batched_rate(windows.__getitems__, list(range(n)), batch) for _ in range(2))
    for i in order:  # untimed: the same pages faulted in for every timed pass below
        ds[i]
    item_rate = _rate(ds, order)
    unchecked_rate = _unchecked_rate(ds, order)
    item_rate = max(item_rate, _rate(ds, order))  # checked before and after unchecked: order does not favour one
    ds.__getitems__(order[:batch])  # untimed warm-up: the first batch opens the partitions' token files
    batched_rate = max(_batched_rate(ds.__getitems__, order, batch) for _ in range(2))
    lean_rate = max(_batched_rate(lean.__getitems__, order, batch) for _ in range(2))
    emit(
        "in_process",
        samples=n,
        pilestore_items_per_s=round(item_rate),
        memmap_windows_per_s=round(loop_rate),
        ratio=round(item_rate / loop_rate, 3),
        pilestore_tokens_per_s=round(item_rate * SEQ_LEN),
        without_read_checks_items_per_s=round(unchecked_rate),
        read_checks_cost=round(1 - item_rate / unchecked_rate, 3),
        batch=batch,
        pilestore_batched_samples_per_s=round(batched_rate),
        memmap_batched_windows_per_s=round(memmap_batched),
        batched_ratio_to_memmap_loop=round(batched_rate / loop_rate, 3),
        batched_ratio_to_memmap_batched=round(batched_rate / memmap_batched, 3),
        pilestore_batched_tokens_per_s=round(batched_rate * SEQ_LEN),
        pilestore_lean_batched_samples_per_s=round(lean_rate),
        lean_batched_ratio_to_memmap_loop=round(lean_rate / loop_rate, 3),
    )
    devices = [None] + (["cuda"] if torch.cuda.is_available() else [])
    for workers in (1, 2):
        for device in devices:
            pin = device is not None
            n = (batches + 1) * batch
            sampler = PileSampler(ds, num_replicas=1, rank=0, seed=1)
            repeat = [i for _ in range(-(-n // len(ds))) for i in sampler][:n]  # epochs of the shuffled order
            common = {"batch_size": batch, "num_workers": workers, "pin_memory": pin, "prefetch_factor": prefetch}
            loaders = {  # (dataset, sampler, collate_fn): interleaved over rounds, the median kept (single runs
                # swing 2x on a shared VM)
                "pilestore": (ds, repeat, collate),
                "pilestore_lean": (lean, repeat, collate),
                "pilestore_lean_int32": (lean32, repeat, collate),
                "pilestore_per_item": (PerItem(ds), repeat, collate),
                "memmap": (MemmapWindows(part, ds._view.dtype.name, n), None, None),
                "memmap_batched": (MemmapBatches(part, ds._view.dtype.name, n), None, passthrough),
                "pilestore_by_value": (ByValueBatches(ds), repeat, collate),
                "pilestore_lean_int32_by_value": (ByValueBatches(lean32), repeat, collate),
                "no_read_lean_int32": (NoReadBatches(len(ds)), repeat, collate),
                "pilestore_lean_int32_prefetch2": (lean32, repeat, collate),  # DataLoader's default prefetch_factor
            }
            runs: dict[str, list[float]] = {name: [] for name in loaders}
            cpus: dict[str, list[float]] = {name: [] for name in loaders}
            timed = repeat[batch : (batches + 1) * batch]  # what rate() times: the batches after the first
            targets = sum(
                int((ds.__getitems__(timed[k : k + batch]).collated["labels"] != -100).sum())
                for k in range(0, len(timed), batch)
            )
            loops: list[float] = []  # the plain loop again in every round: the baseline sees the VM the loaders see
            for _ in range(rounds):
                started = time.perf_counter()
                for i in range(len(windows)):
                    windows[i]
                loops.append(len(windows) / (time.perf_counter() - started))
                for name, (dataset, order_, collate_fn) in loaders.items():
                    options = {**common, "prefetch_factor": 2} if name.endswith("_prefetch2") else common
                    loader = DataLoader(dataset, sampler=order_, collate_fn=collate_fn, **options)
                    got, cpu_per_batch = rate(loader, batches, device)
                    runs[name].append(got)
                    cpus[name].append(cpu_per_batch)
            median = {name: float(np.median(values)) for name, values in runs.items()}
            loop = float(np.median(loops))
            cpu = {name: 1e6 * float(np.median(values)) for name, values in cpus.items()}
            emit(
                "loader",
                workers=workers,
                device=device or "cpu",
                batch=batch,
                samples=batches * batch,
                rounds=rounds,
                pilestore_samples_per_s=round(median["pilestore"]),
                pilestore_per_item_samples_per_s=round(median["pilestore_per_item"]),
                pilestore_lean_samples_per_s=round(median["pilestore_lean"]),
                pilestore_lean_int32_samples_per_s=round(median["pilestore_lean_int32"]),
                lean_int32_tokens_per_s=round(median["pilestore_lean_int32"] * SEQ_LEN),
                lean_int32_ratio_to_batched=round(median["pilestore_lean_int32"] / median["memmap_batched"], 3),
                prefetch_factor=prefetch,
                memmap_loop_windows_per_s=round(loop),
                lean_int32_prefetch2_samples_per_s=round(median["pilestore_lean_int32_prefetch2"]),
                lean_int32_prefetch2_ratio_to_memmap_loop=round(median["pilestore_lean_int32_prefetch2"] / loop, 3),
                no_read_lean_int32_samples_per_s=round(median["no_read_lean_int32"]),
                lean_int32_ratio_to_no_read=round(median["pilestore_lean_int32"] / median["no_read_lean_int32"], 3),
                lean_int32_ratio_to_memmap_loop=round(median["pilestore_lean_int32"] / loop, 3),
                no_read_ratio_to_memmap_loop=round(median["no_read_lean_int32"] / loop, 3),
                by_value_pilestore_samples_per_s=round(median["pilestore_by_value"]),
                by_value_lean_int32_samples_per_s=round(median["pilestore_lean_int32_by_value"]),
                ring_vs_by_value=round(median["pilestore"] / median["pilestore_by_value"], 3),
                lean_int32_ring_vs_by_value=round(
                    median["pilestore_lean_int32"] / median["pilestore_lean_int32_by_value"], 3
                ),
                trainer_cpu_us_per_batch={name: round(value) for name, value in cpu.items()},
                memmap_samples_per_s=round(median["memmap"]),
                memmap_batched_samples_per_s=round(median["memmap_batched"]),
                ratio=round(median["pilestore"] / median["memmap"], 3),
                ratio_to_batched=round(median["pilestore"] / median["memmap_batched"], 3),
                pilestore_tokens_per_s=round(median["pilestore"] * SEQ_LEN),
                target_fraction=round(targets / (batches * batch * SEQ_LEN), 4),
                all_runs={name: [round(v) for v in values] for name, values in runs.items()},
            )


def column(scratch: Path, name: str, dtype: str, n: int) -> np.ndarray:
    return np.lib.format.open_memmap(scratch / f"{name}.npy", mode="w+", dtype=dtype, shape=(n,))


def _records(records: np.ndarray):  # noqa: ANN202
    """A memory-mapped structured array as an Arrow fixed_size_binary column, without a copy."""
    import pyarrow as pa

    buffer = pa.py_buffer(records.view(np.uint8).reshape(-1))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(records.dtype.itemsize), len(records), [None, buffer])


def write_arrow(path: Path, columns: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    import pyarrow as pa

    columns = {k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()}
    table = pa.table(columns)  # numeric numpy: wrapped, not copied
    table = table.replace_schema_metadata(metadata)
    with open(path, "wb") as fh, pa.ipc.new_file(fh, table.schema) as writer:
        writer.write_table(table)


def synthetic_store(work: Path, n: int) -> Path:
    """A store of one document whose eval view (seq_len 2048, context 512) has exactly n windows."""

    from pilestore.ingest import ingest
    from pilestore.manifest import write_sealed
    from pilestore.samples import GENERATION_KEY, SAMPLE_RECORD, SPAN_RECORD, record_checks

    folder = work / f"synthetic-{n}"
    store_dir = folder / "s.store"
    if (store_dir / "tokens" / "synthetic-000000000000" / "view.json").exists():
        return store_dir
    folder.mkdir(parents=True, exist_ok=True)
    shard = folder / "one.jsonl"
    shard.write_text(json.dumps({"text": "one long synthetic document", "meta": {"pile_set_name": "Pile-CC"}}) + "\n")
    ingest([shard], store_dir)
    pred = SEQ_LEN - CONTEXT + 1
    total = SEQ_LEN + (n - 1) * pred  # every window full
    view = store_dir / "tokens" / "synthetic-000000000000"
    (view / "samples").mkdir(parents=True)
    write_zero_tokens(view, total)
    write_arrow(
        view / "p00000.arrow", {"start": np.array([0]), "n_tokens": np.array([total]), "n_bytes": np.array([total])}
    )
    scratch = folder / "scratch"
    scratch.mkdir(exist_ok=True)
    spans = {k: column(scratch, k, t, n) for k, t in (("doc", "int64"), ("eod", "uint8"), ("start", "int64"),
             ("context", "int32"), ("target", "int32"), ("n_bytes", "int64"), ("subset", "int16"),
             ("by_sample", "int64"))}  # fmt: skip
    samples = {k: column(scratch, k + "_s", t, n) for k, t in (("span_begin", "int64"), ("n_spans", "int32"),
               ("n_tokens", "int32"), ("n_bytes", "int64"), ("subset", "int16"), ("by_subset", "int64"))}  # fmt: skip
    step = 10_000_000
    for a in range(0, n, step):
        k = np.arange(a, min(n, a + step), dtype=np.int64)
        later = k > 0
        spans["doc"][k] = 0
        spans["eod"][k] = (~later).astype(np.uint8)
        spans["start"][k] = np.where(later, SEQ_LEN + (k - 1) * pred - CONTEXT, 0)
        spans["context"][k] = np.where(later, CONTEXT, 0)
        spans["target"][k] = np.where(later, pred, SEQ_LEN)
        spans["n_bytes"][k] = 0
        spans["subset"][k] = 0
        spans["by_sample"][k] = k
        samples["span_begin"][k] = k
        samples["n_spans"][k] = 1
        samples["n_tokens"][k] = SEQ_LEN + 1
        samples["n_bytes"][k] = 0
        samples["subset"][k] = 0
        samples["by_subset"][k] = k
    records = {
        "record": column(scratch, "record", f"V{SAMPLE_RECORD.itemsize}", n),
        "span": column(scratch, "span", f"V{SPAN_RECORD.itemsize}", n),
    }
    sample_records = records["record"].view(SAMPLE_RECORD)
    span_records = records["span"].view(SPAN_RECORD)
    for a in range(0, n, step):
        k = slice(a, min(n, a + step))
        for field in ("doc", "start", "context", "target", "n_bytes", "subset", "eod"):
            span_records[field][k] = spans[field][k]
        span_records["offset"][k] = spans["start"][k]  # the one document starts at token 0
        sample_records["span_begin"][k] = samples["span_begin"][k]
        sample_records["n_spans"][k] = 1
        sample_records["n_tokens"][k] = SEQ_LEN + 1
        sample_records["check"][k] = record_checks(sample_records[k], span_records[k], first_span=a)
    name = f"eval-L{SEQ_LEN}-C{CONTEXT}"
    generation = {GENERATION_KEY: f"synthetic-{n}"}
    write_arrow(view / "samples" / f"{name}.rows.arrow", {"span": _records(span_records)}, generation)
    samples["record_s"] = _records(sample_records)
    write_arrow(view / "samples" / f"{name}.spans.arrow", spans, generation)
    write_arrow(
        view / "samples" / f"{name}.samples.arrow", {k.removesuffix("_s"): v for k, v in samples.items()}, generation
    )
    for f in scratch.iterdir():
        f.unlink()
    scratch.rmdir()
    info = {"name": name, "kind": "eval", "seq_len": SEQ_LEN, "context": CONTEXT, "packing": None, "split": "all",
            "val_fraction": None, "samples": n, "subsets": ["Pile-CC"], "subset_samples": [n],
            "generation": f"synthetic-{n}", "view_partitions": 1}  # fmt: skip
    write_sealed(view / "samples" / f"{name}.json", info)
    meta = {"tokenizer": {"file": "synthetic", "sha256": "0" * 64, "vocab_size": 32000, "eod_id": 2},
            "dtype": "uint16", "documents": 1, "tokens": total, "bytes": total,
            "partitions": [{"partition": 0, "documents": 1, "tokens": total, "bytes": total}]}  # fmt: skip
    write_sealed(view / "view.json", meta)
    from pilestore.samples import SampleIndex
    from pilestore.tokens import TokenView

    index = SampleIndex(TokenView(view), name)
    index.gather([0, n // 2, n - 1])  # its records pass the read checks in every chunk (raises otherwise)
    return store_dir


WORKER_MEMORY = """
import json, sys, time
import numpy as np
from torch.utils.data import DataLoader
import pilestore
from pilestore.torch import PileDataset, PileSampler, collate
ds = PileDataset(pilestore.open(sys.argv[1]), "eval", seq_len=2048, context=512)
sampler = PileSampler(ds, num_replicas=1, rank=0, seed=3)
loader = DataLoader(ds, batch_size=16, sampler=sampler, num_workers=1, collate_fn=collate)
it = iter(loader)
def status(pid):
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "RssAnon", "RssFile")}
next(it)
pid = it._workers[0].pid
before = status(pid)
for _ in range(int(sys.argv[2]) // 16):
    next(it)
print(json.dumps({"samples": len(ds), "after_first_batch_mb": before, "after_mb": status(pid)}))
"""

OPEN_AND_LOOKUP = """
import json, random, statistics, sys, time
import pilestore
from pilestore.torch import PileDataset
t0 = time.perf_counter()
ds = PileDataset(pilestore.open(sys.argv[1]), "eval", seq_len=2048, context=512)
opened = time.perf_counter() - t0
rng = random.Random(0)
picks = [rng.randrange(len(ds)) for _ in range(22_000)]
times = []
for i in picks:
    t = time.perf_counter_ns(); ds[i]; times.append(time.perf_counter_ns() - t)
times = times[2_000:]  # the first reads fault in the small columns' pages
print(json.dumps({"samples": len(ds), "open_ms": round(opened * 1e3, 2),
                  "item_p50_us": round(statistics.median(times) / 1e3, 1),
                  "item_p99_us": round(sorted(times)[int(0.99 * len(times))] / 1e3, 1)}))
"""

FIRST_BATCH = """
import time
t0 = time.perf_counter()
import sys, json
import torch
from torch.utils.data import DataLoader
import pilestore
from pilestore.torch import PileDataset, PileSampler, collate
t1 = time.perf_counter()
ds = PileDataset(pilestore.open(sys.argv[1]), "eval", seq_len=2048, context=512)
sampler = PileSampler(ds, num_replicas=1, rank=0)
batch = next(iter(DataLoader(ds, batch_size=16, sampler=sampler, num_workers=1, collate_fn=collate)))
t2 = time.perf_counter()
print(json.dumps({"samples": len(ds), "imports_s": round(t1 - t0, 3), "first_batch_s": round(t2 - t1, 3)}))
"""


def warm(store_dir: Path) -> None:
    """Read a store's sample index files once, so that they are in the page cache (if they fit)."""
    for path in sorted(store_dir.glob("tokens/*/samples/*.arrow")):
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass


def run_python(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def sharded_store(work: Path, corpus: Path, shards: int, model: Path) -> Path:
    """The corpus's lines dealt round-robin into `shards` .jsonl sources, ingested into one store (a partition
    each), tokenized with `model`, with the train view's index (kept in work/)."""
    import zstandard

    from pilestore.ingest import ingest

    store_dir = work / f"sample-{shards}-partitions.store"
    if (store_dir / "tokens").exists():
        return store_dir
    with open(corpus, "rb") as fh:
        lines = zstandard.ZstdDecompressor().stream_reader(fh).read().splitlines()
    sources = []
    for k in range(shards):
        sources.append(work / f"shard-{k}-of-{shards}.jsonl")
        sources[-1].write_bytes(b"\n".join(lines[k::shards]) + b"\n")
    ingest(sources, store_dir)
    return tokenized(store_dir, model)


def bench_partitions(stores: dict[int, Path], batch: int, batches: int, rounds: int) -> None:
    """Lean int32 batches per second from each store (same number of random samples), rounds interleaved."""
    import torch

    import pilestore
    from pilestore.torch import PileDataset

    readers = {}
    for parts, store_dir in stores.items():
        store = pilestore.open(store_dir)
        ds = PileDataset(store, "train", seq_len=SEQ_LEN, context=CONTEXT, fields=LEAN, dtype=torch.int32)
        order = np.random.default_rng(3).integers(0, len(ds), batch * batches).tolist()
        _batched_rate(ds.__getitems__, order, batch)  # untimed: files opened, pages faulted in
        readers[parts] = (ds.__getitems__, order)
    rates: dict[int, list[float]] = {parts: [] for parts in stores}
    for _ in range(rounds):
        for parts, (read, order) in readers.items():
            rates[parts].append(_batched_rate(read, order, batch))
    medians = {parts: float(np.median(r)) for parts, r in rates.items()}
    one = medians[min(medians)]
    emit(
        "partitions",
        batch=batch,
        samples=batch * batches,
        rounds=rounds,
        lean_int32_batched_samples_per_s={str(parts): round(rate) for parts, rate in medians.items()},
        ratio_to_one_partition={str(parts): round(rate / one, 3) for parts, rate in medians.items()},
        all_runs={str(parts): [round(r) for r in runs] for parts, runs in rates.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "sample.jsonl.zst")
    parser.add_argument("--work", type=Path, default=None, help="folder kept between runs (default: a temp folder)")
    parser.add_argument("--parts", default="loader,memory,first_batch")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3, help="loader runs per system (interleaved; median kept)")
    parser.add_argument("--prefetch", type=int, default=4, help="DataLoader prefetch_factor of the worker loaders "
                        "(pilestore's lean int32 batches also at the default, 2)")  # fmt: skip
    parser.add_argument("--sizes", default="10000000,100000000", help="sample counts of the synthetic indexes")
    parser.add_argument("--memory-samples", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=8, help="partitions of the sharded store (--parts partitions)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="pilestore-torch-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "loader" in parts:
            bench_loader(
                prepare(work, args.corpus, args.vocab_size), args.batch, args.batches, args.rounds, args.prefetch
            )
        if "partitions" in parts:
            one = prepare(work, args.corpus, args.vocab_size)
            many = sharded_store(work, args.corpus, args.shards, work / "tok.model")
            bench_partitions({1: one, args.shards: many}, args.batch, args.batches, max(args.rounds, 5))
        sizes = [int(s) for s in args.sizes.split(",")]
        for n in sizes if parts & {"memory", "first_batch"} else []:
            started = time.perf_counter()
            store_dir = synthetic_store(work, n)
            emit("synthetic_index", samples=n, build_s=round(time.perf_counter() - started, 1))
            if "memory" in parts:
                emit("worker_memory", **run_python(WORKER_MEMORY, str(store_dir), str(args.memory_samples)))
                warm(store_dir)  # the page cache decides look-up latency: compare sizes with their files cached
                emit("open_and_lookup", **run_python(OPEN_AND_LOOKUP, str(store_dir)))
            if "first_batch" in parts and n == sizes[0]:
                emit("first_batch", **run_python(FIRST_BATCH, str(store_dir)))
    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} cpus", file=sys.stderr)


if __name__ == "__main__":
    main()
