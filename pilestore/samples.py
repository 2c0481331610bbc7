"""Sample indexes on disk, and reading a sample back as model inputs.

    tokens/<view>/samples/<kind>-L<seq_len>-C<context>[-<packing>][-<split><val_fraction>]
        .spans.arrow, .samples.arrow, .rows.arrow and .json (written last: an index without it does not exist)

spans:   doc int64, eod uint8, start int64, context int32, target int32, n_bytes int64, subset int16 (its
         document's subset id; document order), by_sample int64 (a permutation: the spans in sample order)
samples: span_begin int64 (into by_sample), n_spans int32, n_tokens int32 (x-tokens used of seq_len + 1),
         n_bytes int64, subset int16 (the subset of the span with the most targets; ties: the first span),
         by_subset int64 (a permutation: samples grouped by subset, in sample order within a subset)
rows:    span (fixed-size records, SPAN_RECORD): the spans in sample order; samples.record (SAMPLE_RECORD) points
         into it. Copies of the columns above laid out for look-ups (a page or two per sample), plus each span's
         first token in its partition's token file (`offset`), and per sample a checksum (`check`) of its record
         and its span records: a look-up reads nothing that is not checked (token blocks: tokens.py).
json:    shape, split, counts, and `subsets` (names, by id) with `subset_samples` (samples per subset id)

n_bytes of a span: the UTF-8 bytes of the original text its target tokens cover, exactly: the tokenized view
stores how many bytes of its document each token covers (token_bytes.py), so bytes(targets j..k) =
lengths[j..k] summed. Summed over all spans of a view, that is every byte of every document
that has tokens: bits per byte = sum(loss in nats) / ln(2) / sum(n_bytes).

This module defines the files and reads them (numpy and pyarrow only); indexes.py writes them, over the windows
that windows.py lays out with numba.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PilestoreError, StoreFormatError
from .index import map_columns
from .manifest import read_sealed
from .splits import split_suffix
from .tokens import TOKENS_DIR, VIEW_FILE, TokenView, ViewBehindError

_ARANGE = np.arange(1 << 16, dtype=np.int64)
# assemble.py's kernels read these two layouts as word positions frozen into their cached machine code: edit
# assemble.py too when they change (its cache is keyed by its own file), so the kernels are compiled again.
# Read-optimised copies of the fields a look-up needs, one record per sample and per span (spans in sample
# order): reading sample i touches one sample record and its contiguous span records, a page or two,
# instead of a page per column (which made look-ups 2.4x slower at 100M samples than at 10M).
SAMPLE_RECORD = np.dtype(
    [("span_begin", "<i8"), ("n_bytes", "<i8"), ("n_spans", "<i4"), ("n_tokens", "<i4"), ("check", "<u8")]
)
SPAN_RECORD = np.dtype(
    [("doc", "<i8"), ("start", "<i8"), ("offset", "<i8"), ("n_bytes", "<i8"), ("context", "<i4"), ("target", "<i4"),
     ("subset", "<i2"), ("eod", "u1"), ("pad", "u1", (5,))]
)  # fmt: skip
# The check of a sample: its record's first 3 words and its span records' words (uint64, little-endian) times
# odd constants, summed mod 2**64. Linear, so it is computed for 100M samples at once with numpy; any change to
# one word changes it (an odd multiplier is invertible mod 2**64), random damage to several all but surely does.
_SAMPLE_WORDS = 3
_SPAN_WORDS = SPAN_RECORD.itemsize // 8
_MULTIPLIERS = (np.arange(1, 2 * (_SAMPLE_WORDS + _SPAN_WORDS), 2, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | 1
_SAMPLE_MULT = _MULTIPLIERS[:_SAMPLE_WORDS]
_SPAN_MULT = _MULTIPLIERS[_SAMPLE_WORDS:]
_MAX_SPANS_TILED = 1 << 12
_SPAN_MULT_TILED = np.tile(_SPAN_MULT, _MAX_SPANS_TILED)
# A batch as pilestore.torch.collate and SampleIndex.gather lay it out: every field a view of one buffer,
# in this order (one buffer: a batch leaves a DataLoader worker as one array, pilestore.torch._packed).
FIXED = ("input_ids", "labels", "position_ids")  # [B, seq_len] each
SCALARS = ("n_bytes", "sample")  # [B]
RAGGED = ("doc_lengths", "span_bytes", "subset")  # concatenated, then <key>_offsets [B + 1]
FIELDS = (*FIXED, *SCALARS, *RAGGED)

# The three files' columns, in file order, with their types (a structured dtype: a fixed_size_binary record).
COLUMNS: dict[str, dict[str, Any]] = {
    "spans": {"doc": np.int64, "eod": np.uint8, "start": np.int64, "context": np.int32, "target": np.int32,
              "n_bytes": np.int64, "subset": np.int16, "by_sample": np.int64},
    "samples": {"span_begin": np.int64, "n_spans": np.int32, "n_tokens": np.int32, "n_bytes": np.int64,
                "subset": np.int16, "by_subset": np.int64, "record": SAMPLE_RECORD},
    "rows": {"span": SPAN_RECORD},
}  # fmt: skip
GENERATION_KEY = "pilestore.generation"  # in both Arrow files' schema metadata and the .json: they belong together
IGNORE = -100  # label of a position that is not predicted (PyTorch cross_entropy's ignore_index)
SAMPLES_DIR = "samples"
REBUILD = "rebuild the index with `pilestore index`"


def index_name(
    kind: str, seq_len: int, context: int, packing: str | None, split: str = "all", val_fraction: float | None = None
) -> str:
    """tokens/<view>/samples/<name>.*: e.g. train-L2048-C512-bestfit, eval-L2048-C512-val0.01."""
    return (
        f"{kind}-L{seq_len}-C{context}" + (f"-{packing}" if kind == "train" else "") + split_suffix(split, val_fraction)
    )


def record_checks(
    sample_records: np.ndarray, span_records: np.ndarray, first_span: int = 0, rows: int = 1 << 16
) -> np.ndarray:
    """The check of every sample (see _MULTIPLIERS) from its record and its span records. span_records[k] is
    span first_span + k (a chunk of the samples comes with the chunk of their spans). Worked out `rows`
    samples at a time, each chunk with just its spans: an index build's temporaries stay a few MB, not ~50
    bytes a sample."""
    checks = np.empty(len(sample_records), np.uint64)
    for at in range(0, len(sample_records), rows):
        part = sample_records[at : at + rows]
        lo = int(part["span_begin"][0]) - first_span  # spans are laid out in sample order
        hi = int(part["span_begin"][-1]) + int(part["n_spans"][-1]) - first_span
        checks[at : at + len(part)] = _chunk_checks(part, span_records[lo:hi], first_span + lo)
    return checks


def _chunk_checks(sample_records: np.ndarray, span_records: np.ndarray, first_span: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        head = sample_records.view(np.uint64).reshape(len(sample_records), -1)[:, :_SAMPLE_WORDS]
        checks = (head * _SAMPLE_MULT).sum(axis=1, dtype=np.uint64)
        if len(span_records):  # a chunk of train samples may hold millions of spans: summed in chunks too
            per_span = _weighted_rows(span_records.view(np.uint64).reshape(len(span_records), -1), _SPAN_MULT)
            has_spans = sample_records["n_spans"] > 0
            begins = sample_records["span_begin"][has_spans] - first_span
            checks[has_spans] += np.add.reduceat(per_span, begins).astype(np.uint64, copy=False)
    return checks


def _weighted_rows(words: np.ndarray, multipliers: np.ndarray, rows: int = 1 << 16) -> np.ndarray:
    """(words * multipliers).sum(axis=1) in uint64 (wrapping), `rows` rows at a time."""
    out = np.empty(len(words), np.uint64)
    with np.errstate(over="ignore"):
        for at in range(0, len(words), rows):
            out[at : at + rows] = (words[at : at + rows] * multipliers).sum(axis=1, dtype=np.uint64)
    return out


def _record_ok(check: int, head: np.ndarray, span_words: np.ndarray, count: int) -> bool:
    """Whether one sample's record words and span record words give its check (record_checks, one sample)."""
    if count > _MAX_SPANS_TILED or len(span_words) != count * _SPAN_WORDS:
        return False
    total = int(np.dot(head, _SAMPLE_MULT)) + int(np.dot(span_words, _SPAN_MULT_TILED[: len(span_words)]))
    return check == total % (1 << 64)


def _as_words(records: np.ndarray, dtype: type) -> np.ndarray:
    """Records seen as rows of integers of `dtype` (a view)."""
    return records.view(dtype).reshape(len(records), records.dtype.itemsize // np.dtype(dtype).itemsize)


def check_fields(fields: Sequence[str]) -> tuple[str, ...]:
    """`fields` in FIELDS order, refused if empty, repeated or unknown (a trainer asks only for what it uses)."""
    fields = [fields] if isinstance(fields, str) else list(fields)
    unknown = [field for field in fields if field not in FIELDS]
    if unknown or not fields or len(set(fields)) != len(fields):
        raise ValueError(
            f"fields {list(fields)}: give one or more distinct names of {list(FIELDS)}"
            + (f" ({', '.join(map(repr, unknown))} unknown)" if unknown else "")
        )
    return tuple(field for field in FIELDS if field in fields)


@functools.lru_cache(maxsize=64)
def _checked_tuple(fields: tuple[str, ...]) -> tuple[str, ...]:
    return check_fields(fields)


def _checked_fields(fields: Sequence[str]) -> tuple[str, ...]:
    """check_fields, remembered for the tuples a dataset passes with every batch."""
    return _checked_tuple(fields) if isinstance(fields, tuple) else check_fields(fields)


_ABSENT = (-1, ())  # batch_layout's entry for a field not built, as assemble.fill's places take it


def batch_layout(
    b: int, seq_len: int, ragged: Mapping[str, int], fields: Sequence[str] = FIELDS
) -> tuple[int, dict[str, tuple[int, tuple[int, ...]]]]:
    """A batch of b samples in one buffer: its size in items and, per field of `fields`, (offset, shape).

    ragged: the total length of each RAGGED field (of those in `fields`) over the batch."""
    layout: dict[str, tuple[int, tuple[int, ...]]] = {}
    at = 0
    for key in (key for key in FIXED if key in fields):
        layout[key] = (at, (b, seq_len))
        at += b * seq_len
    for key in (key for key in SCALARS if key in fields):
        layout[key] = (at, (b,))
        at += b
    for key in (key for key in RAGGED if key in fields):
        layout[key] = (at, (ragged[key],))
        layout[f"{key}_offsets"] = (at + ragged[key], (b + 1,))
        at += ragged[key] + b + 1
    return at, layout


def carve(buffer: Any, layout: Mapping[str, tuple[int, tuple[int, ...]]]) -> dict[str, Any]:
    """The fields of a batch_layout as views of `buffer` (a numpy array or a torch tensor)."""
    return {key: buffer[at : at + math.prod(shape)].reshape(shape) for key, (at, shape) in layout.items()}


@dataclass(frozen=True, slots=True)
class IndexShape:
    """What an index is: its view kind, window shape and split."""

    kind: str
    seq_len: int
    context: int
    packing: str | None
    split: str = "all"
    val_fraction: float | None = None

    @property
    def name(self) -> str:
        return index_name(self.kind, self.seq_len, self.context, self.packing, self.split, self.val_fraction)

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> IndexShape:
        """The shape of a built index, from its .json."""
        return cls(
            info["kind"], info["seq_len"], info["context"], info["packing"], info.get("split", "all"),
            info.get("val_fraction"),
        )  # fmt: skip

    def command(self, store: Path, tokenizer: Path) -> str:
        """The `pilestore index` command that builds this index (and its eval or train twin)."""
        words = ["pilestore index", f"--store {store}", f"--tokenizer {tokenizer}"]
        words += [f"--seq-len {self.seq_len}", f"--context {self.context}"]
        words += [f"--packing {self.packing}"] if self.packing else []
        words += [f"--val-fraction {self.val_fraction}"] if self.val_fraction is not None else []
        return " ".join(words)


def find_index(
    view: TokenView,
    kind: str,
    seq_len: int | None = None,
    context: int | None = None,
    packing: str | None = None,
    split: str = "all",
    val_fraction: float | None = None,
) -> str:
    """The name of the one index of `kind` that matches the given fields (None: any), or a clear error."""
    wanted = {"kind": kind, "seq_len": seq_len, "context": context, "split": split, "val_fraction": val_fraction}
    if kind == "train":
        wanted["packing"] = packing
    names = []
    for path in sorted((view.folder / SAMPLES_DIR).glob("*.json")):
        info = read_sealed(path, REBUILD)
        info.setdefault("split", "all")
        info.setdefault("val_fraction", None)
        if all(v is None or info.get(k) == v for k, v in wanted.items() if k != "val_fraction") and (
            split == "all" or val_fraction is None or info["val_fraction"] == val_fraction
        ):
            names.append(info["name"])
    if len(names) != 1:
        fields = ", ".join(f"{k}={v}" for k, v in wanted.items() if v is not None)
        raise PilestoreError(
            f"{len(names)} sample indexes of {view.folder} match {fields} ({', '.join(names) or 'none'}): "
            "pass --seq-len/--context/--packing/--split to choose, or build one with `pilestore index`"
        )
    return names[0]


def built_for(info: Mapping[str, Any]) -> int:
    """How many partitions its view had when an index was built (an index built for fewer than the view has now
    is behind it: SampleIndex refuses it, tokenize rebuilds it)."""
    return int(info.get("view_partitions", 0))


def describe_views(store_path: Path, store_partitions: int) -> list[dict[str, Any]]:
    """Each tokenized view of a store (`pilestore info`): its tokenizer, the partitions it holds of the store's,
    tokens, and its sample indexes, each with whether it holds every partition of the view. A view or index
    whose description cannot be read is listed with the error instead."""
    views = []
    for view_file in sorted((store_path / TOKENS_DIR).glob(f"*/{VIEW_FILE}")):
        try:
            view = TokenView(view_file.parent)
        except PilestoreError as err:
            views.append({"view": view_file.parent.name, "error": str(err)})
            continue
        indexes = []
        for info_file in sorted((view.folder / SAMPLES_DIR).glob("*.json")):
            try:
                info = read_sealed(info_file, REBUILD)
            except StoreFormatError as err:
                indexes.append({"name": info_file.stem, "error": str(err)})
                continue
            up_to_date = built_for(info) == view.num_partitions
            indexes.append({"name": info["name"], "samples": info["samples"], "up_to_date": up_to_date})
        tokenizer = view.meta["tokenizer"]
        views.append(
            {
                "view": view.folder.name,
                "tokenizer": tokenizer["file"],
                "vocab_size": tokenizer["vocab_size"],
                "partitions": view.num_partitions,
                "up_to_date": view.num_partitions == store_partitions,
                "documents": view.meta["documents"],
                "tokens": view.meta["tokens"],
                "indexes": indexes,
            }
        )
    return views


class _Changing(PilestoreError):
    """An index's files are from different builds: being rebuilt right now, or a rebuild that died."""


@dataclass(frozen=True, slots=True)
class Sample:
    """Sample i as a model sees it: x = seq_len + 1 tokens; input_ids = x[:-1]; labels[j] predicts x[j + 1]."""

    input_ids: np.ndarray
    labels: np.ndarray  # IGNORE where x[j + 1] is context, [eod] or padding
    position_ids: np.ndarray  # restart at 0 with every span
    doc_lengths: np.ndarray  # x-tokens per span, then padding (for cu_seqlens-style masking)
    spans: list[dict[str, int]]
    n_bytes: int


class SampleIndex:
    """An index written by write_index, memory-mapped."""

    def __init__(self, view: TokenView, name: str, generation: str | None = None, wait: float = 10.0) -> None:
        """Open index `name` of `view`. An index being rebuilt while it is opened is opened again once the
        rebuild is complete (for up to `wait` seconds); `generation` pins the build (a rebuild is an error)."""
        self.view = view
        folder = view.folder / SAMPLES_DIR
        self._where = folder / name
        deadline = time.monotonic() + wait
        while True:
            try:
                self._open(folder, name)
                break
            except _Changing as err:
                if time.monotonic() > deadline:
                    raise PilestoreError(str(err)) from None
                time.sleep(0.02)
        if generation is not None and self.info["generation"] != generation:
            raise PilestoreError(
                f"{self._where}: rebuilt since this dataset was created (another build of the index); "
                "create the dataset again"
            )
        partitions = built_for(self.info)
        if partitions > view.num_partitions:  # tokenize added partitions since the view was opened
            self.view = type(view)(view.folder)
            if partitions > self.view.num_partitions:
                raise PilestoreError(f"{self._where}: built for partitions {view.folder} does not have; {REBUILD}")
        if partitions < self.view.num_partitions:
            command = IndexShape.of(self.info).command(view.folder.parent.parent, view.folder / "tokenizer.model")
            raise ViewBehindError(
                f"{self._where}: built when the view had {partitions} of the {self.view.num_partitions} partitions "
                f"it has now; the documents tokenized since would be left out. Rebuild it: `{command}`"
            )
        self.seq_len = int(self.info["seq_len"])
        self.subset_names: list[str] = list(self.info["subsets"])
        self.subset_samples = np.asarray(self.info["subset_samples"], dtype=np.int64)
        self._doc_first: list[int] | None = None
        self._files: tuple[np.ndarray, ...] | None = None

    def _open(self, folder: Path, name: str) -> None:
        try:
            self.info = read_sealed(folder / f"{name}.json", REBUILD)
        except FileNotFoundError:
            raise PilestoreError(f"{folder / name}: no such sample index; build it with `pilestore index`") from None
        found: list[dict[bytes, bytes]] = [{}, {}, {}]
        try:
            self.spans = map_columns(folder / f"{name}.spans.arrow", metadata=found[0])
            self.samples = map_columns(folder / f"{name}.samples.arrow", metadata=found[1])
            rows = map_columns(folder / f"{name}.rows.arrow", metadata=found[2])
        except StoreFormatError as err:
            raise PilestoreError(f"{err}; rebuild the index with `pilestore index`") from err
        generation = str(self.info.get("generation", "")).encode()
        if any(meta.get(GENERATION_KEY.encode()) != generation for meta in found):
            raise _Changing(
                f"{folder / name}: its .json and .spans/.samples/.rows.arrow stayed from different builds (a "
                "rebuild that did not finish?); rebuild it with `pilestore index`"
            )
        if "record" not in self.samples or "subsets" not in self.info or "subset" not in self.spans:
            raise PilestoreError(f"{folder / name}: written by an older pilestore; rebuild it with `pilestore index`")
        if self.samples["record"].shape[1:] != (SAMPLE_RECORD.itemsize,) or rows["span"].shape[1:] != (
            SPAN_RECORD.itemsize,
        ):
            raise PilestoreError(f"{folder / name}: written by an older pilestore; rebuild it with `pilestore index`")
        self._sample_records = self.samples.pop("record").view(SAMPLE_RECORD).reshape(-1)
        self._span_records = rows["span"].view(SPAN_RECORD).reshape(-1)
        self._sample_words = _as_words(self._sample_records, np.uint64)
        self._span_words = self._span_records.view(np.uint64).reshape(-1)

    def __len__(self) -> int:
        return len(self.samples["span_begin"])

    def _doc_starts(self) -> list[int]:
        """The first document of each partition (and the total), computed once."""
        if self._doc_first is None:
            counts = [len(self.view.partition(p).n_tokens) for p in range(self.view.num_partitions)]
            self._doc_first = np.concatenate(([0], np.cumsum(counts))).tolist()
        return self._doc_first

    def _locate(self, doc: int) -> tuple[int, int]:
        starts = self._doc_starts()
        p = bisect.bisect_right(starts, doc) - 1
        return p, doc - starts[p]

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i %= len(self)
        record = self._sample_records[i]
        first, count = int(record["span_begin"]), int(record["n_spans"])
        words = self._span_words[first * _SPAN_WORDS : (first + count) * _SPAN_WORDS]
        if not _record_ok(int(record["check"]), self._sample_words[i, :_SAMPLE_WORDS], words, count):
            self._damaged(i)
        spans = [
            {"doc": d, "eod": e, "start": s, "offset": o, "context": c, "target": t, "n_bytes": b, "subset": u}
            for d, s, o, b, c, t, u, e, _ in self._span_records[first : first + count].tolist()
        ]
        size = self.seq_len + 1
        x = np.zeros(size, dtype=np.int64)  # padding id 0 ([PAD] in the Pile configuration)
        labels = np.full(size - 1, IGNORE, dtype=np.int64)  # labels[j] predicts x[j + 1]
        positions = np.zeros(size, dtype=np.int64)
        lengths = []
        at = 0
        for span in spans:
            eod, context, target = span["eod"], span["context"], span["target"]
            p, _ = self._locate(span["doc"])
            offset = span["offset"]
            n = eod + context + target
            if eod:
                x[at] = self.view.eod_id
            x[at + eod : at + n] = self.view.partition(p).read(offset, offset + context + target)
            labels[at + n - target - 1 : at + n - 1] = x[at + n - target : at + n]
            positions[at : at + n] = _ARANGE[:n] if n <= len(_ARANGE) else np.arange(n)
            lengths.append(n)
            at += n
        if at < size:
            lengths.append(size - at)
        return Sample(x[:-1], labels, positions[:-1], np.asarray(lengths, np.int64), spans, int(record["n_bytes"]))

    def gather(
        self, ids: Any, alloc: Callable[[int], np.ndarray] | None = None, fields: Sequence[str] = FIELDS
    ) -> dict[str, np.ndarray]:
        """Samples `ids` as one batch: the fields of pilestore.torch.collate([ds[i] for i in ids]), built for
        the whole batch at once by two numba kernels (assemble.py: records checked as __getitem__ checks them,
        then the spans laid out), the token blocks they were copied from hashed before the batch is returned.
        alloc(n) gives the batch's buffer of n int64 or int32 items (default: np.empty int64).
        fields: the ones to build (check_fields); a trainer that reads only input_ids and labels moves a third
        fewer bytes. Every sample's records are checked whatever the fields; token blocks when tokens are read."""
        buffer, layout = self.gather_packed(ids, alloc, fields)
        return carve(buffer, layout)

    def gather_packed(
        self, ids: Any, alloc: Callable[[int], np.ndarray] | None = None, fields: Sequence[str] = FIELDS
    ) -> tuple[np.ndarray, dict[str, tuple[int, tuple[int, ...]]]]:
        """gather's batch as its one buffer and the batch_layout of its fields in it (what gather carves)."""
        from . import assemble

        fields = _checked_fields(fields)
        ids = np.array(ids, dtype=np.int64).reshape(-1)  # a copy: plan rewrites negative ids as the rows they name
        addresses, part_tokens, like, doc_first = self._token_files()
        (i64, i32, u64), (s64, s32, s16, s8, su64) = self._words
        status, where, total, padded, blocks = assemble.plan(
            ids, i64, i32, u64, s64, s32, s8, su64, _SAMPLE_MULT, _SPAN_MULT, self.seq_len + 1, doc_first, part_tokens,
            like.itemsize,
        )  # fmt: skip
        if status == assemble.OUT_OF_RANGE:
            raise IndexError(f"sample {int(ids[where])} out of range for {len(self)} samples")
        if status == assemble.DAMAGED:
            self._damaged(int(ids[where]))
        if status == assemble.OUTSIDE:
            self._outside(where)
        ragged = {"doc_lengths": total + padded, "span_bytes": total, "subset": total}
        size, layout = batch_layout(len(ids), self.seq_len, ragged, fields)
        buffer = alloc(size) if alloc is not None else np.empty(size, np.int64)
        places = np.array([layout.get(key, _ABSENT)[0] for key in assemble.PLACED], np.int64)
        read = assemble.fill(
            ids, i64, i32, s64, s32, s16, s8, doc_first, addresses, part_tokens, like, self.view.eod_id,
            self.seq_len + 1, blocks, buffer, places
        )  # fmt: skip
        self._check_blocks(read)
        return buffer, layout

    def _check_blocks(self, read: np.ndarray) -> None:
        """Hash the token blocks fill read (sorted keys partition << PART_SHIFT | block): in one kernel where
        blockhash can (the first mismatch is then checked again, and named, the Python way), else a partition
        at a time."""
        from .assemble import BLOCK_MASK, PART_SHIFT

        if not len(read):
            return
        sums = self._block_sums
        if sums is not None:
            from .blockhash import first_mismatch

            addresses, part_tokens, like, _ = self._token_files()
            bad = first_mismatch(sums[0], read, addresses, part_tokens, like.itemsize, *sums[1:])
            if bad < 0:
                return
            read = read[bad : bad + 1]
        parts = read >> PART_SHIFT
        starts = [0, *(np.flatnonzero(parts[1:] != parts[:-1]) + 1).tolist(), len(read)]
        for begin, end in itertools.pairwise(starts):
            self.view.partition(int(parts[begin])).check_blocks(read[begin:end] & BLOCK_MASK)

    @functools.cached_property
    def _block_sums(self) -> tuple[Any, np.ndarray, np.ndarray] | None:
        """What blockhash.first_mismatch takes besides the keys and the token files (_token_files): its hash
        function and the checksums' addresses and counts; None where blockhash.function() is None or a checksum
        file is not in native byte order. Made once per process."""
        from .blockhash import function

        parts = [self.view.partition(p) for p in range(self.view.num_partitions)]
        fn = function()
        if fn is None or not all(part.sums.dtype.isnative for part in parts):
            return None
        return (
            fn,
            np.array([part.sums.ctypes.data for part in parts], dtype=np.int64),
            np.array([len(part.sums) for part in parts], dtype=np.int64),
        )

    @functools.cached_property
    def _words(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """The sample records as int64, int32, uint64 words and the span records as int64, int32, int16, uint8,
        uint64 words (one row per record): how assemble's kernels read them."""
        sample = (*(_as_words(self._sample_records, t) for t in (np.int64, np.int32)), self._sample_words)
        span = tuple(_as_words(self._span_records, t) for t in (np.int64, np.int32, np.int16, np.uint8, np.uint64))
        return sample, span

    def _token_files(self) -> tuple[np.ndarray, ...]:
        """Every partition's token file as assemble.fill takes them (addresses, lengths, dtype: the arrays stay
        mapped by self.view), and each partition's first document (then the total): made once per process."""
        if self._files is None:
            from .assemble import token_files

            arrays = [self.view.partition(p).tokens for p in range(self.view.num_partitions)]
            self._files = (*token_files(arrays), np.asarray(self._doc_starts(), dtype=np.int64))
        return self._files

    def _outside(self, k: int) -> None:
        """Span k's tokens lie outside its partition's token file (or its document outside the view): raise."""
        doc, offset = int(self._span_records[k]["doc"]), int(self._span_records[k]["offset"])
        count = int(self._span_records[k]["context"]) + int(self._span_records[k]["target"])
        if not 0 <= doc < self._doc_starts()[-1]:
            raise PilestoreError(
                f"{self._where}: span {k} names document {doc}, which {self.view.folder} does not have: the index "
                f"does not belong to this view; {REBUILD}"
            )
        self.view.partition(self._locate(doc)[0]).check_range(offset, offset + count)
        raise PilestoreError(f"{self._where}: span {k}'s tokens lie outside their token file; {REBUILD}")

    def _damaged(self, i: int) -> None:
        raise PilestoreError(
            f"{self._where}: sample {i}'s records do not match their checksum: the index is damaged; "
            "rebuild it with `pilestore index` (`pilestore verify` lists what else is damaged)"
        )
