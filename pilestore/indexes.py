"""Building a view's sample indexes: documents of a split -> windows (numba) -> index files.

    pilestore index --seq-len L --context C                      eval + train over every document
    pilestore index --seq-len L --context C --val-fraction F     train over split "train", eval over split "val"

A document outside the split is given zero tokens before windowing, so the indexes keep the store's document
ids and never hold one of its tokens. Written under the store's writer lock, one index at a time, each made
visible by its .json. The files' layout, and how they are read back, is samples.py's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .arrowfile import ArrowFile, create
from .manifest import read_sealed, write_sealed, writer_lock
from .samples import (
    COLUMNS,
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
from .token_bytes import PrefixSums
from .tokens import TokenView
from .windows import Spans, eval_view, train_view

CHUNK = 1 << 18  # spans (or samples) per step of an index write: its temporaries are ~200 bytes a span

StageCallback = Callable[[str, int | None, str], Callable[[int], None]]
"""start(label, total, unit) -> advance(n): a build's stages, each labelled with its index's name: "windows"
(total None: no known end), "spans" (total: spans, advanced as they are written), "samples" (likewise), then
"checksums" (None)."""


def _no_stages(label: str, total: int | None, unit: str) -> Callable[[int], None]:
    return lambda n: None


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


def build_index(
    view: TokenView, store: Store, shape: IndexShape, on_stage: StageCallback = _no_stages
) -> dict[str, Any]:
    """Build one index (call under the writer lock). What it holds while it writes: the windows (25 bytes a span
    for the eval view), each document's subset id (2 bytes), and a few chunks' temporaries."""
    view.check_build_inputs()
    subset, checksum, names = document_table(store)
    lengths = view.doc_lengths()
    if len(lengths) != len(subset):
        raise ValueError(f"{view.folder}: {len(lengths)} tokenized documents but the store has {len(subset)}")
    lengths[~in_split(checksum, shape.split, shape.val_fraction)] = 0
    del checksum
    on_stage(f"{shape.name}: windows", None, "")
    if shape.kind == "eval":
        spans = eval_view(lengths, shape.seq_len, shape.context)
    else:
        spans = train_view(lengths, shape.seq_len, shape.context, shape.packing or "bestfit")
    del lengths
    return write_index(view, shape, spans, subset, names, on_stage=on_stage)


def build_indexes(
    view: TokenView,
    store: Store,
    seq_len: int,
    context: int,
    packing: str,
    val_fraction: float | None = None,
    on_stage: StageCallback = _no_stages,
) -> list[dict[str, Any]]:
    """The eval and train indexes for these options, written under the store's writer lock."""
    shapes = index_shapes(seq_len, context, packing, val_fraction)
    with writer_lock(store.path):
        return [build_index(view, store, shape, on_stage) for shape in shapes]


def write_index(
    view: TokenView,
    shape: IndexShape,
    spans: Spans,
    doc_subset: np.ndarray,
    subsets: list[str],
    chunk: int = CHUNK,
    on_stage: StageCallback = _no_stages,
) -> dict[str, Any]:
    """Write a Spans (windows.py) with byte counts and subsets as the named index; returns its description.

    doc_subset: the subset id (into `subsets`) of every document of the view, in store order. The files are laid
    out first, then filled `chunk` spans or samples at a time (arrowfile.py), then given their generation: the
    memory this takes beyond the Spans is a few chunks', whatever the size of the index."""
    import xxhash

    folder = view.folder / SAMPLES_DIR
    folder.mkdir(exist_ok=True)
    documents, several = _document_counts(spans.doc, chunk)  # checks the order the passes rely on
    placeholder = secrets.token_hex(16)  # as long as the generation (an xxh3_128 hex digest) that replaces it
    rows = {"spans": len(spans.doc), "samples": spans.num_samples, "rows": len(spans.doc)}
    paths = {part: folder / f"{shape.name}.{part}.arrow" for part in COLUMNS}
    files: dict[str, ArrowFile] = {}
    try:
        for part, columns in COLUMNS.items():
            files[part] = create(paths[part].with_suffix(".tmp"), columns, rows[part], {GENERATION_KEY: placeholder})
        advance = on_stage(f"{shape.name}: spans", rows["spans"], "spans")
        n_bytes = _write_spans(view, spans, doc_subset, files["spans"], chunk, advance)
        advance = on_stage(f"{shape.name}: samples", rows["samples"], "samples")
        sample_tokens, subset_samples = _write_samples(
            view, spans, doc_subset, files["spans"].view("n_bytes"), files, len(subsets), chunk, advance
        )
        on_stage(f"{shape.name}: checksums", None, "")
        _write_by_subset(files["samples"], subset_samples, chunk)
        hasher = xxhash.xxh3_128()
        for file in files.values():
            file.hash_columns(hasher)
        generation = hasher.hexdigest()
        for file in files.values():
            file.set_metadata(placeholder, generation)
            file.close()
        checksums = {paths[part].name: file_sha256(file.path) for part, file in files.items()}
        for part, file in files.items():  # all at once, then the .json: readers retry across this short window
            os.replace(file.path, paths[part])
    except BaseException:
        for file in files.values():  # nothing of a failed build is left behind (a file renamed stays: its
            with contextlib.suppress(OSError):  # .json is the old build's, which readers and verify tell apart)
                file.close()
            file.path.unlink(missing_ok=True)
        raise
    slots = spans.num_samples * (shape.seq_len + 1)
    info = {
        "name": shape.name,
        "kind": shape.kind,
        "seq_len": shape.seq_len,
        "context": shape.context,
        "packing": shape.packing,
        "split": shape.split,
        "val_fraction": shape.val_fraction,
        "samples": spans.num_samples,
        "spans": len(spans.doc),
        "target_tokens": int(spans.target.sum()),
        "bytes": n_bytes,
        "padding_fraction": round(1 - sample_tokens / slots, 6) if slots else 0,
        "documents": documents,
        "documents_in_several_windows": several,
        "subsets": list(subsets),
        "subset_samples": subset_samples.tolist(),
        "sha256": checksums,
        "generation": generation,
        "view_partitions": view.num_partitions,
    }
    write_sealed(folder / f"{shape.name}.json", info)
    return info


def _first_docs(view: TokenView) -> np.ndarray:
    """The global id of each partition's first document, then the number of documents."""
    counts = [len(view.partition(p).n_tokens) for p in range(view.num_partitions)]
    return np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))


def _offsets(view: TokenView, first_doc: np.ndarray, doc: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each span's partition, and its first token's position in that partition's token file."""
    part = np.searchsorted(first_doc, doc, side="right") - 1
    offset = np.empty(len(doc), dtype=np.int64)
    for p in np.unique(part).tolist():
        mask = part == p
        offset[mask] = view.partition(p).start[doc[mask] - first_doc[p]] + start[mask]
    return part, offset


def _write_spans(
    view: TokenView, spans: Spans, doc_subset: np.ndarray, out: ArrowFile, chunk: int, advance: Callable[[int], None]
) -> int:
    """The spans file, in document order, `chunk` spans at a time; returns the bytes of all their targets.

    n_bytes of a span: the sum of its target tokens' byte lengths, as the difference of two prefix sums of the
    partition's .lens file (samples.py). In document order the spans' targets follow each other through every
    partition, so each .lens file is read once, front to back (token_bytes.PrefixSums)."""
    first_doc = _first_docs(view)
    counters: dict[int, PrefixSums] = {}
    total = 0
    try:
        for a in range(0, len(spans.doc), chunk):
            b = min(a + chunk, len(spans.doc))
            doc, start, context, target = spans.doc[a:b], spans.start[a:b], spans.context[a:b], spans.target[a:b]
            part, offset = _offsets(view, first_doc, doc, start)
            n_bytes = np.zeros(b - a, dtype=np.int64)
            for p in np.unique(part).tolist():
                if p not in counters:
                    for done in counters.values():  # partitions come in order: the earlier ones are finished
                        done.close()
                    counters[p] = view.byte_counter(p)
                mask = (part == p) & (target > 0)
                first = offset[mask] + context[mask]  # the first target token's position in the partition
                sums = counters[p].at(np.concatenate((first, first + target[mask])))
                n_bytes[mask] = sums[len(first) :] - sums[: len(first)]
            by_sample = spans.by_sample[a:b] if spans.by_sample is not None else np.arange(a, b)
            columns = {"doc": doc, "eod": spans.eod[a:b], "start": start, "context": context, "target": target,
                       "n_bytes": n_bytes, "subset": doc_subset[doc], "by_sample": by_sample}  # fmt: skip
            for name, values in columns.items():
                out.write(name, a, values.astype(out.dtypes[name], copy=False))
            total += int(n_bytes.sum())
            advance(b - a)
    finally:
        for counter in counters.values():
            counter.close()
    return total


def _sample_chunks(begin: np.ndarray, chunk: int) -> Iterator[tuple[int, int]]:
    """(first, end) sample ranges of about `chunk` spans each (at least one sample: a sample holds up to
    seq_len + 1 spans)."""
    s0, n = 0, len(begin) - 1
    while s0 < n:
        s1 = int(np.searchsorted(begin, begin[s0] + chunk, side="right")) - 1
        s1 = min(max(s1, s0 + 1), n)
        yield s0, s1
        s0 = s1


def _write_samples(
    view: TokenView,
    spans: Spans,
    doc_subset: np.ndarray,
    span_bytes: np.ndarray,
    files: dict[str, ArrowFile],
    n_subsets: int,
    chunk: int,
    advance: Callable[[int], None],
) -> tuple[int, np.ndarray]:
    """The samples file (all but by_subset) and the rows file, in sample order; span_bytes: the spans' n_bytes
    as written to the spans file. Returns the x-tokens of all samples, and the samples per subset."""
    first_doc = _first_docs(view)
    begin = spans.span_begin
    samples, out_rows = files["samples"], files["rows"]
    tokens, per_subset = 0, np.zeros(n_subsets, dtype=np.int64)
    for s0, s1 in _sample_chunks(begin, chunk):
        lo, hi = int(begin[s0]), int(begin[s1])
        at = spans.by_sample[lo:hi] if spans.by_sample is not None else np.arange(lo, hi)
        rows = np.zeros(hi - lo, SPAN_RECORD)
        for field in ("doc", "start", "context", "target", "eod"):
            rows[field] = getattr(spans, field)[at]
        rows["n_bytes"] = span_bytes[at]
        rows["subset"] = doc_subset[rows["doc"]]
        rows["offset"] = _offsets(view, first_doc, rows["doc"], rows["start"])[1]
        out_rows.write("span", lo, rows)
        first = begin[s0:s1] - lo  # each sample's first span, within this chunk's
        n_spans = np.diff(begin[s0 : s1 + 1])
        n_tokens = np.add.reduceat(rows["eod"].astype(np.int64) + rows["context"] + rows["target"], first)
        records = np.zeros(s1 - s0, SAMPLE_RECORD)
        records["span_begin"], records["n_spans"] = begin[s0:s1], n_spans
        records["n_tokens"], records["n_bytes"] = n_tokens, np.add.reduceat(rows["n_bytes"], first)
        records["check"] = record_checks(records, rows, lo)
        subset = _sample_subsets(rows["target"], rows["subset"], first, n_spans)
        columns = {"span_begin": records["span_begin"], "n_spans": records["n_spans"],
                   "n_tokens": records["n_tokens"], "n_bytes": records["n_bytes"], "subset": subset,
                   "record": records}  # fmt: skip
        for name, values in columns.items():
            samples.write(name, s0, values.astype(samples.dtypes[name], copy=False))
        tokens += int(n_tokens.sum())
        per_subset += np.bincount(subset, minlength=n_subsets)
        advance(s1 - s0)
    return tokens, per_subset


def _sample_subsets(target: np.ndarray, span_subset: np.ndarray, first: np.ndarray, n_spans: np.ndarray) -> np.ndarray:
    """Per sample, the subset of its span with the most target tokens (the first such span on a tie); the spans
    in sample order, sample i's from first[i] on (n_spans[i] >= 1 of them)."""
    target = target.astype(np.int64)
    most = np.maximum.reduceat(target, first)
    position = np.arange(len(target), dtype=np.int64)
    first_max = np.minimum.reduceat(np.where(target == np.repeat(most, n_spans), position, len(target)), first)
    return span_subset[first_max].astype(np.int16)


def _write_by_subset(samples: ArrowFile, per_subset: np.ndarray, chunk: int) -> None:
    """by_subset: the samples grouped by subset, in sample order within a subset (a stable counting sort of the
    subset column, read back `chunk` samples at a time)."""
    at = np.cumsum(per_subset) - per_subset  # where each subset's next sample goes
    subsets = samples.view("subset")
    for s0 in range(0, len(subsets), chunk):
        part = subsets[s0 : s0 + chunk]
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(len(per_subset) + 1))
        for s in np.flatnonzero(np.diff(bounds)).tolist():
            group = order[bounds[s] : bounds[s + 1]]
            samples.write("by_subset", int(at[s]), group.astype(np.int64) + s0)
            at[s] += len(group)


def _document_counts(doc: np.ndarray, chunk: int) -> tuple[int, int]:
    """(documents, documents with more than one span) of spans in document order, `chunk` spans at a time: a
    span whose document differs from the one before starts a document; one that follows such a start is the
    second span of its document."""
    documents = several = 0
    last, last_new = -1, False  # the span before the chunk: its document, and whether it started one
    for a in range(0, len(doc), chunk):
        part = doc[a : a + chunk]
        before = np.concatenate(([last], part[:-1]))
        if (part < before).any():
            raise ValueError("the spans of an index must come in document order")
        new = part != before
        documents += int(np.count_nonzero(new))
        several += int(np.count_nonzero(~new & np.concatenate(([last_new], new[:-1]))))
        last, last_new = int(part[-1]), bool(new[-1])
    return documents, several


def shapes_behind(view: TokenView) -> list[IndexShape]:
    """The shapes of the view's indexes built before it gained the partitions it has now (SampleIndex refuses
    them: they would leave the new documents out)."""
    shapes = []
    for path in sorted((view.folder / SAMPLES_DIR).glob("*.json")):
        info = read_sealed(path, REBUILD)
        if built_for(info) < view.num_partitions:
            shapes.append(IndexShape.of(info))
    return shapes


def rebuild_behind(view: TokenView, store: Store, on_stage: StageCallback = _no_stages) -> list[dict[str, Any]]:
    """Rebuild every index of the view that is behind it (after tokenize added partitions), under the lock."""
    with writer_lock(store.path):
        return [build_index(view, store, shape, on_stage) for shape in shapes_behind(view)]
