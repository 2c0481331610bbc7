"""Build one partition (SQLite file + Arrow index) from one source, inside a private staging folder.

    source ─▶ records ─▶ buffer the first `sample_bytes` of text ─▶ train dictionaries
           ─▶ compress every document, in source order ─▶ partition.sqlite, index.arrow, result.json

`result.json` is written last (atomically): a staging folder without it is an interrupted build and is
deleted and redone; one with it is reused by the next ingest of the same source with the same settings, if
its files still have the sizes and sha256 it records (ingest._is_finished).
Memory is bounded by the training buffer, MAX_IN_FLIGHT batches and 20 bytes of index per document.
"""

from __future__ import annotations

import json
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import partition
from .atomic import write_atomic
from .codec import CompressionSettings, Compressor, train_dictionaries
from .document import checksum, dump_json, encode_text, is_plain, row_checksum, subset_of
from .errors import LineError, SourceError
from .index import write_index
from .manifest import now
from .shards import Record, SourceReader, file_sha256

PARTITION_FILE = "partition.sqlite"
INDEX_FILE = "index.arrow"
RESULT_FILE = "result.json"
BATCH_ROWS = 4096
BATCH_BYTES = 32 * 1024 * 1024
MAX_EXAMPLES = 5  # bad lines quoted per source; all are counted
BUFFER_BYTES_PER_DOC = 512  # what a buffered Record costs beyond its text: 1-byte documents must not buffer 64M
MAX_IN_FLIGHT = 4  # batches queued for the writer thread (each <= BATCH_BYTES of text): bounds memory
MAX_INTERNED_RESTS = 65536  # distinct non-plain `rest` values interned per partition; further ones stored inline

ProgressCallback = Callable[[int, int], None]  # (compressed bytes read, documents written) since last call


@dataclass(slots=True)
class _Stats:
    docs: Counter[str] = field(default_factory=Counter)
    text: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


class _PartitionWriter:
    """Appends documents to a partition: the caller parses, a writer thread trains, compresses and inserts.

    zstd and SQLite release the GIL, so the writer thread overlaps with parsing in the caller's thread.
    At most MAX_IN_FLIGHT batches wait for it, which bounds memory.
    """

    def __init__(self, path: Path, settings: CompressionSettings, threads: int) -> None:
        self.conn = partition.connect_writer(path)
        self.documents = partition.DocumentWriter(self.conn)
        self.settings = settings
        self.threads = threads
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="pilestore-writer")
        self.in_flight: deque[Future[None]] = deque()
        self.compressor: Compressor | None = None
        self.dict_rows: list[tuple[int, str | None, bytes | None]] = []
        self.subset_ids: dict[str, int] = {}
        self.pending: list[tuple[str, int, bytes, int, str | int | None]] = []
        self.pending_bytes = 0
        self.text_bytes = array("q")
        self.rest_ids: dict[str, int] = {}
        self.subsets = array("i")
        self.checksums = array("q")
        self.stored: Counter[str] = Counter()  # written by the writer thread, read after finish()

    def train(self, samples: dict[str, list[bytes]]) -> None:
        """Train the dictionaries in the writer thread; batches added after this use them."""
        self._submit(self._train, samples)

    def _train(self, samples: dict[str, list[bytes]]) -> None:
        dict_rows, codec_of_subset = _dictionary_rows(train_dictionaries(samples, self.settings, self.threads))
        self.compressor = Compressor(
            codec_of_subset, {row[0]: row[2] for row in dict_rows}, self.settings, self.threads
        )
        self.dict_rows = dict_rows
        partition.write_dictionaries(self.conn, dict_rows)

    def add(self, subset: str, data: bytes, rest: dict[str, Any]) -> None:
        """Queue one document; it is compressed and written with its batch."""
        sid = self.subset_ids.setdefault(subset, len(self.subset_ids))
        stored_rest, rest_text = self._rest(rest, subset)
        self.pending.append((subset, sid, data, row_checksum(data, subset, rest_text), stored_rest))
        self.text_bytes.append(len(data))
        self.subsets.append(sid)
        self.checksums.append(checksum(data))  # the index holds the text's own checksum
        self.pending_bytes += len(data)
        if len(self.pending) >= BATCH_ROWS or self.pending_bytes >= BATCH_BYTES:
            self.flush()

    def _rest(self, rest: dict[str, Any], subset: str) -> tuple[str | int | None, str | None]:
        """(what the row stores, the JSON text): NULL for a plain {"meta": {"pile_set_name": subset}}, else an
        interned id or the JSON text itself."""
        if is_plain(rest, subset):
            return None, None
        text = dump_json(rest).decode()
        found = self.rest_ids.get(text)
        if found is None and len(self.rest_ids) < MAX_INTERNED_RESTS:
            found = self.rest_ids[text] = len(self.rest_ids)
        return (text if found is None else found), text

    def flush(self) -> None:
        if self.pending:
            first = len(self.checksums) - len(self.pending)
            self._submit(self._write, first, self.pending)
            self.pending = []
            self.pending_bytes = 0

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        while len(self.in_flight) >= MAX_IN_FLIGHT:
            self.in_flight.popleft().result()  # re-raises what failed in the writer thread
        self.in_flight.append(self.executor.submit(fn, *args))

    def _write(self, first: int, batch: list[tuple[str, int, bytes, int, str | int | None]]) -> None:
        """Compress (grouped by dictionary, see Compressor.compress_batch) and insert, in source order."""
        assert self.compressor is not None  # train() was submitted first  # noqa: S101
        compressed = self.compressor.compress_batch([(subset, data) for subset, _, data, _, _ in batch])
        rows = []
        for i, ((subset, sid, data, digest, rest), (codec, stored)) in enumerate(zip(batch, compressed, strict=True)):
            rows.append((first + i, sid, codec, len(data), digest, rest, stored))
            self.stored[subset] += len(stored)
        self.documents.write(rows)

    def finish(self) -> None:
        """Write what is queued and wait for the writer thread."""
        self.flush()
        while self.in_flight:
            self.in_flight.popleft().result()
        self.documents.close()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def columns(self) -> dict[str, np.ndarray]:
        return {
            "text_bytes": np.frombuffer(self.text_bytes, np.int64),
            "subset": np.frombuffer(self.subsets, np.int32),
            "checksum": np.frombuffer(self.checksums, np.int64),
        }


def _dictionary_rows(
    dicts: dict[str | None, bytes | None],
) -> tuple[list[tuple[int, str | None, bytes | None]], dict[str | None, int]]:
    """Rows of the dictionaries table (shared first, id 1) and the codec id of each subset."""
    rows: list[tuple[int, str | None, bytes | None]] = [(1, None, dicts[None])]
    codec_of_subset: dict[str | None, int] = {None: 1}
    for subset in sorted(s for s in dicts if s is not None):
        codec_of_subset[subset] = len(rows) + 1
        rows.append((len(rows) + 1, subset, dicts[subset]))
    return rows, codec_of_subset


def take_sample(records: Iterator[Record], budget: int) -> list[tuple[str, bytes, Record]]:
    """(subset, UTF-8 text, record) from the start of `records` until they take about `budget` bytes of memory:
    their text plus BUFFER_BYTES_PER_DOC each, so a source of tiny documents cannot fill memory."""
    buffered: list[tuple[str, bytes, Record]] = []
    used = 0
    for record in records:
        data = encode_text(record.text)
        buffered.append((subset_of(record.rest), data, record))
        used += len(data) + BUFFER_BYTES_PER_DOC
        if used >= budget:
            break
    return buffered


def build_partition(
    source: Path,
    out_dir: Path,
    settings: CompressionSettings,
    *,
    strict: bool = False,
    threads: int = 1,
    on_progress: ProgressCallback = lambda b, d: None,
) -> dict[str, Any]:
    """Ingest `source` into out_dir/{partition.sqlite,index.arrow,result.json}; returns the result dict.

    `threads` zstd threads compress each batch (the result does not depend on it).

    Raises SourceError for an unreadable source, and for the first bad line when `strict`.
    """
    started = time.perf_counter()
    stats = _Stats()
    pending_docs = 0

    def count_bytes(n: int) -> None:
        nonlocal pending_docs
        on_progress(n, pending_docs)
        pending_docs = 0

    def bad_line(line_no: int, err: LineError) -> None:
        where = f"{source}:{line_no}: {err.detail}"
        if strict:
            raise SourceError(
                f"{where} (--strict stops at the first bad line; without it such lines are counted and skipped)"
            )
        stats.skipped[err.reason] += 1
        if len(stats.examples) < MAX_EXAMPLES:
            stats.examples.append(where)

    reader = SourceReader(source, on_bytes=count_bytes)
    records = reader.records(bad_line)
    buffered = take_sample(records, settings.sample_bytes)
    pending_docs += len(buffered)

    samples: dict[str, list[bytes]] = {}
    for subset, data, _ in buffered:
        samples.setdefault(subset, []).append(data)

    part_path = out_dir / PARTITION_FILE
    writer = _PartitionWriter(part_path, settings, threads)
    try:
        writer.train(samples)
        del samples

        def add(subset: str, data: bytes, rest: dict[str, Any]) -> None:
            writer.add(subset, data, rest)
            stats.docs[subset] += 1
            stats.text[subset] += len(data)

        for subset, data, record in buffered:
            add(subset, data, record.rest)
        buffered.clear()
        for record in records:
            pending_docs += 1
            add(subset_of(record.rest), encode_text(record.text), record.rest)
        writer.finish()
    finally:
        writer.close()
    dict_rows = writer.dict_rows
    on_progress(0, pending_docs)

    subsets = list(writer.subset_ids)
    partition.write_rests(writer.conn, [(i, text) for text, i in writer.rest_ids.items()])
    partition.write_subsets(writer.conn, subsets)
    partition.write_properties(
        writer.conn,
        {
            "format_version": str(partition.SCHEMA_VERSION),
            "source_name": source.name,
            "source_sha256": reader.sha256,
            "compression": json.dumps(settings.as_dict()),
        },
    )
    partition.finish(writer.conn, part_path)
    index_path = out_dir / INDEX_FILE
    write_index(index_path, writer.columns())

    dictionary_bytes = sum(len(row[2]) for row in dict_rows if row[2] is not None)
    result = {
        "source": {"name": source.name, "size": reader.size, "sha256": reader.sha256, "format": reader.format},
        "documents": sum(stats.docs.values()),
        "text_bytes": sum(stats.text.values()),
        "stored_bytes": sum(writer.stored.values()),
        "dictionary_bytes": dictionary_bytes,
        "subsets": subsets,
        "subset_stats": {
            name: {"documents": stats.docs[name], "text_bytes": stats.text[name], "stored_bytes": writer.stored[name]}
            for name in subsets
        },
        "dictionaries": {row[1] or "(shared)": len(row[2]) if row[2] else 0 for row in dict_rows},
        "skipped": dict(stats.skipped),
        "skipped_examples": stats.examples,
        "compression": settings.as_dict(),
        "files": {
            "partition": {"size": part_path.stat().st_size, "sha256": file_sha256(part_path)},
            "index": {"size": index_path.stat().st_size, "sha256": file_sha256(index_path)},
        },
        "seconds": round(time.perf_counter() - started, 3),
        "created": now(),
    }
    write_atomic(out_dir / RESULT_FILE, json.dumps(result, indent=1).encode())
    return result
