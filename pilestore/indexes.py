"""Building a view's sample indexes: documents of a split -> windows (numba) -> index files.

    pilestore index --seq-len L --context C                      eval + train over every document
    pilestore index --seq-len L --context C --val-fraction F     train over split "train", eval over split "val"

A document outside the split is given zero tokens before windowing, so the indexes keep the store's document
ids and never hold one of its tokens. Written under the store's writer lock, one index at a time, each made
visible by its .json. The files' layout, and how they are read back, is samples.py's.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .index import arrow_table
from .manifest import read_sealed, write_sealed, writer_lock
from .samples import (
    GENERATION_KEY,
    REBUILD,
    SAMPLE_RECORD,
    SAMPLES_DIR,
    SPAN_RECORD,
    IndexShape,
    built_for,
    record_checks,
)
from .shards import file_sha256
from .splits import in_split
from .store import Store
from .tokens import TokenView
from .windows import eval_view, train_view


def document_table(store: Store) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per document in store order: its subset id (into the returned names) and its text checksum."""
    names = sorted(store.manifest["subsets"])
    ids, checksums = [], []
    for p, part in enumerate(store.manifest["partitions"]):
        local_to_global = np.array([names.index(n) for n in part["subsets"]] or [0], dtype=np.int16)
        index = store.index(p)
        ids.append(local_to_global[index.subset])
        checksums.append(index.checksum)
    if not ids:
        return np.zeros(0, np.int16), np.zeros(0, np.int64), names
    return np.concatenate(ids), np.concatenate(checksums), names


def index_shapes(seq_len: int, context: int, packing: str, val_fraction: float | None) -> list[IndexShape]:
    """The indexes `pilestore index` builds for these options."""
    if val_fraction is None:
        return [IndexShape("eval", seq_len, context, None), IndexShape("train", seq_len, context, packing)]
    return [
        IndexShape("eval", seq_len, context, None, "val", val_fraction),
        IndexShape("train", seq_len, context, packing, "train", val_fraction),
    ]


def build_index(view: TokenView, store: Store, shape: IndexShape) -> dict[str, Any]:
    """Build one index (call under the writer lock)."""
    view.check_build_inputs()
    subset, checksum, names = document_table(store)
    lengths = view.doc_lengths()
    if len(lengths) != len(subset):
        raise ValueError(f"{view.folder}: {len(lengths)} tokenized documents but the store has {len(subset)}")
    lengths = np.where(in_split(checksum, shape.split, shape.val_fraction), lengths, 0)
    if shape.kind == "eval":
        spans = eval_view(lengths, shape.seq_len, shape.context)
    else:
        spans = train_view(lengths, shape.seq_len, shape.context, shape.packing or "bestfit")
    return write_index(view, shape, spans, subset, names)


def build_indexes(
    view: TokenView, store: Store, seq_len: int, context: int, packing: str, val_fraction: float | None = None
) -> list[dict[str, Any]]:
    """The eval and train indexes for these options, written under the store's writer lock."""
    with writer_lock(store.path):
        return [build_index(view, store, shape) for shape in index_shapes(seq_len, context, packing, val_fraction)]


def sample_subsets(spans: Any, doc_subset: np.ndarray) -> np.ndarray:
    """Per sample, the subset of its span with the most target tokens (the first such span on a tie)."""
    if spans.num_samples == 0:
        return np.zeros(0, np.int16)
    order = spans.order()
    target = spans.target[order].astype(np.int64)
    begin = spans.span_begin[:-1]
    most = np.maximum.reduceat(target, begin)
    counts = np.diff(spans.span_begin)
    position = np.arange(len(order), dtype=np.int64)
    first_max = np.minimum.reduceat(np.where(target == np.repeat(most, counts), position, len(order)), begin)
    return doc_subset[spans.doc[order[first_max]]].astype(np.int16)


def span_offsets(view: TokenView, doc: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each span's partition, and its first token's position in that partition's token file."""
    counts = [len(view.partition(p).n_tokens) for p in range(view.num_partitions)]
    first_doc = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
    part = np.searchsorted(first_doc, doc, side="right") - 1
    offset = np.zeros(len(doc), dtype=np.int64)
    for p in range(view.num_partitions):
        mask = part == p
        offset[mask] = view.partition(p).start[doc[mask] - first_doc[p]] + start[mask]
    return part, offset


def span_bytes(
    view: TokenView, part: np.ndarray, offset: np.ndarray, context: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """Exact UTF-8 bytes covered by each span's target tokens (see the module docstring); part and offset as
    span_offsets gives them: the sums of the byte lengths before the first target and after the last, read
    from the .lens files front to back in bounded chunks (TokenView.byte_sums), so a build over many GB of
    them keeps its memory bounded."""
    out = np.zeros(len(part), dtype=np.int64)
    for p in range(view.num_partitions):
        mask = (part == p) & (target > 0)
        first = offset[mask] + context[mask]  # first target token in the partition file
        sums = view.byte_sums(p, np.concatenate((first, first + target[mask])))
        out[mask] = sums[len(first) :] - sums[: len(first)]
    return out


def _records(pa: Any, records: np.ndarray) -> Any:
    """A structured numpy array as an Arrow fixed_size_binary column (one record per row) over the same memory:
    no copy (an index build holds every column at once; a copy of the span records was ~45 bytes a span)."""
    width = records.dtype.itemsize
    raw = np.ascontiguousarray(records).view(np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(records), [None, pa.py_buffer(raw)])


def _generation(tables: dict[str, Any]) -> str:
    """A content hash of an index's columns: the same for a byte-identical rebuild, different otherwise."""
    import xxhash

    hasher = xxhash.xxh3_128()
    for table in tables.values():
        for column in table.columns:
            for chunk in column.chunks:
                for buffer in chunk.buffers():
                    if buffer is not None:
                        hasher.update(memoryview(buffer))
    return hasher.hexdigest()


def write_index(
    view: TokenView, shape: IndexShape, spans: Any, doc_subset: np.ndarray, subsets: list[str]
) -> dict[str, Any]:
    """Write a Spans (windows.py) with byte counts and subsets as the named index; returns its description.

    doc_subset: the subset id (into `subsets`) of every document of the view, in store order."""
    import pyarrow as pa

    folder = view.folder / SAMPLES_DIR
    folder.mkdir(exist_ok=True)
    name, seq_len = shape.name, shape.seq_len
    span_part, span_offset = span_offsets(view, spans.doc, spans.start)
    n_bytes = span_bytes(view, span_part, span_offset, spans.context, spans.target)
    begin = spans.span_begin
    n_spans = np.diff(begin).astype(np.int32)
    by_sample = spans.order()
    sample_bytes = np.add.reduceat(n_bytes[by_sample], begin[:-1]) if len(n_bytes) else np.zeros(0, np.int64)
    sample_tokens = spans.sample_tokens().astype(np.int32)
    subset = sample_subsets(spans, doc_subset)
    by_subset = np.argsort(subset, kind="stable").astype(np.int64)
    span_records = np.zeros(len(by_sample), SPAN_RECORD)
    for field in ("doc", "start", "context", "target", "eod"):
        span_records[field] = getattr(spans, field)[by_sample]
    span_records["n_bytes"] = n_bytes[by_sample]
    span_records["subset"] = doc_subset[spans.doc[by_sample]]
    span_records["offset"] = span_offset[by_sample]
    sample_records = np.zeros(spans.num_samples, SAMPLE_RECORD)
    sample_records["span_begin"], sample_records["n_spans"] = begin[:-1], n_spans
    sample_records["n_tokens"], sample_records["n_bytes"] = sample_tokens, sample_bytes
    sample_records["check"] = record_checks(sample_records, span_records)
    tables = {
        "spans": arrow_table(
            {
                "doc": spans.doc.astype(np.int64, copy=False),  # the kernels' int32 where it fits
                "eod": spans.eod,
                "start": spans.start.astype(np.int64, copy=False),
                "context": spans.context,
                "target": spans.target,
                "n_bytes": n_bytes,
                "subset": doc_subset[spans.doc].astype(np.int16),
                "by_sample": by_sample.astype(np.int64, copy=False),
            }
        ),
        "samples": arrow_table(
            {
                "span_begin": begin[:-1],
                "n_spans": n_spans,
                "n_tokens": sample_tokens,
                "n_bytes": sample_bytes,
                "subset": subset,
                "by_subset": by_subset,
                "record": _records(pa, sample_records),
            }
        ),
        "rows": arrow_table({"span": _records(pa, span_records)}),
    }
    generation = _generation(tables)
    files, written = {}, []
    for part, table in tables.items():
        table = table.replace_schema_metadata({GENERATION_KEY: generation})
        path = folder / f"{name}.{part}.arrow"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            with pa.ipc.new_file(fh, table.schema) as writer:
                writer.write_table(table)
            os.fsync(fh.fileno())
        files[path.name] = file_sha256(tmp)
        written.append((tmp, path))
    for tmp, path in written:  # all at once, then the .json: readers retry across this short window
        os.replace(tmp, path)
    slots = spans.num_samples * (seq_len + 1)
    info = {
        "name": name,
        "kind": shape.kind,
        "seq_len": seq_len,
        "context": shape.context,
        "packing": shape.packing,
        "split": shape.split,
        "val_fraction": shape.val_fraction,
        "samples": spans.num_samples,
        "spans": len(spans.doc),
        "target_tokens": int(spans.target.sum()),
        "bytes": int(n_bytes.sum()),
        "padding_fraction": round(1 - sample_tokens.sum() / slots, 6) if slots else 0,
        "documents": int(len(np.unique(spans.doc))),
        "documents_in_several_windows": int((np.bincount(spans.doc) > 1).sum()) if len(spans.doc) else 0,
        "subsets": list(subsets),
        "subset_samples": np.bincount(subset, minlength=len(subsets)).tolist(),
        "sha256": files,
        "generation": generation,
        "view_partitions": view.num_partitions,
    }
    write_sealed(folder / f"{name}.json", info)
    return info


def shapes_behind(view: TokenView) -> list[IndexShape]:
    """The shapes of the view's indexes built before it gained the partitions it has now (SampleIndex refuses
    them: they would leave the new documents out)."""
    shapes = []
    for path in sorted((view.folder / SAMPLES_DIR).glob("*.json")):
        info = read_sealed(path, REBUILD)
        if built_for(info) < view.num_partitions:
            shapes.append(IndexShape.of(info))
    return shapes


def rebuild_behind(view: TokenView, store: Store) -> list[dict[str, Any]]:
    """Rebuild every index of the view that is behind it (after tokenize added partitions), under the lock."""
    with writer_lock(store.path):
        return [build_index(view, store, shape) for shape in shapes_behind(view)]
