"""Per-document zstd frames with dictionaries trained on the source's own documents.

    first sample_mb of text ─▶ train one dictionary per big-enough subset + one shared ─▶ Compressor
    doc ─▶ magicless zstd frame (content size in header; no magic number, dict id or checksum) at
           `small_level` (5) under `small_bytes` (16 KiB), else at `level` (3) ─▶ raw if it does not shrink

Frames are magicless (zstd's ZSTD_f_zstd1_magicless format): the 4 bytes of `28 b5 2f fd` every frame would
start with say nothing that the codec id does not, and cost 24 KB of the sample corpus's store. Prepend them
to hand a stored frame to the `zstd` tool.

Codec ids, stored per document: 0 = raw bytes; k >= 1 = row k of the partition's `dictionaries` table
(a row whose dictionary is NULL means plain zstd without a dictionary).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zstandard

from .errors import CorruptDocumentError

log = logging.getLogger(__name__)

RAW = 0
FRAME_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS
TRAIN_PREFIX_BYTES = 8 * 1024  # a dictionary helps a document's first KBs; long tails teach it little
TRAIN_SAMPLES_PER_DICT_BYTE = 64  # zstd advises ~100x; 64x trained as well on the sample corpus, 8x faster
MAX_DICT_SIZE = 4 * 1024 * 1024
COVER_K, COVER_D = 1024, 8  # what zstd's parameter search picked on the sample corpus; fixing them saves 90%


@dataclass(frozen=True, kw_only=True, slots=True)
class CompressionSettings:
    """How ingest compresses documents. Defaults chosen by benchmarks/bench_codec.py (docs/format.md)."""

    level: int = 3
    """zstd level of documents of `small_bytes` and more (of every document when `small_level` is None or not
    above it): 3 compresses at ~170 MB/s per core."""
    small_level: int | None = 5
    """zstd level of shorter documents, never below `level`; None: `level`. Level 5's deeper search finds far
    more of a small document in its dictionary: on the sample corpus it makes the store 1.4% smaller (0.978x its
    source instead of 0.992x, and smaller than MosaicML MDS's shards) for 14% more compression time of those
    documents; on the 1 GB synthetic shard, whose small documents are word salad, ingest takes 7-13% more CPU
    (0.49-0.53x a zstd pipeline per CPU second, 0.51-0.56x wall; benchmarks.md, "Level by document size")."""
    small_bytes: int = 16 * 1024
    """Documents shorter than this (UTF-8 bytes) compress at `small_level`."""
    dict_size: int = 112 * 1024
    """Bytes per trained dictionary (zstd's default); 0 disables dictionaries."""
    sample_bytes: int = 64 * 1024 * 1024
    """Memory for the documents buffered from the start of a source to train its dictionaries (text plus
    512 bytes per document, so a source of tiny documents buffers at most 131,072 of them)."""
    min_subset_bytes: int = 1024 * 1024
    """A subset gets its own dictionary with at least this much sample text..."""
    min_subset_docs: int = 20
    """...and at least this many sample documents; other subsets share one dictionary."""

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 22:
            raise ValueError(f"level must be a zstd level from 1 to 22, got {self.level}")
        if self.small_level is not None and not 1 <= self.small_level <= 22:
            raise ValueError(f"small_level must be a zstd level from 1 to 22 (or None), got {self.small_level}")
        if self.small_bytes < 0:
            raise ValueError(f"small_bytes must be >= 0, got {self.small_bytes}")
        if self.dict_size and not 1024 <= self.dict_size <= MAX_DICT_SIZE:
            raise ValueError(f"dict_size must be 0 (no dictionary) or 1 KiB..4 MiB, got {self.dict_size}")
        if self.sample_bytes < 0:
            raise ValueError(f"sample_bytes must be >= 0, got {self.sample_bytes}")
        if self.min_subset_bytes < 0 or self.min_subset_docs < 1:
            raise ValueError(
                f"min_subset_bytes must be >= 0 and min_subset_docs >= 1, got "
                f"{self.min_subset_bytes} and {self.min_subset_docs}"
            )

    def level_of_small(self) -> int | None:
        """The level documents under `small_bytes` get, when it is not `level` (None: every document at `level`)."""
        return small_level_of(self.as_dict())

    def as_dict(self) -> dict[str, int | str | None]:
        return {
            "codec": "zstd",
            "zstd_library": ".".join(map(str, zstandard.ZSTD_VERSION)),
            "frame_format": "magicless",
            "level": self.level,
            "small_level": self.small_level,
            "small_bytes": self.small_bytes,
            "dict_size": self.dict_size,
            "sample_bytes": self.sample_bytes,
            "min_subset_bytes": self.min_subset_bytes,
            "min_subset_docs": self.min_subset_docs,
        }


def small_level_of(compression: Mapping[str, Any]) -> int | None:
    """From settings as a partition records them (CompressionSettings.as_dict): the level of documents under
    `small_bytes` when it differs from `level` (it is never below it), else None."""
    level, small = compression["level"], compression.get("small_level")
    if small is None or small <= level or not compression.get("small_bytes"):
        return None
    return int(small)


def _train(samples: list[bytes], settings: CompressionSettings) -> bytes | None:
    """A dictionary for these samples, or None when there is too little data to train one.

    The dictionary is at most 1/32 of the sample text (a 112 KiB one for 1 MiB of text costs more than it
    saves); at most 64 x its size of sample text is used, taken evenly across the samples.
    """
    samples = [s[:TRAIN_PREFIX_BYTES] for s in samples if s]
    total = sum(map(len, samples))
    size = min(settings.dict_size, total // 32)
    if len(samples) < 8 or size < 1024:
        return None
    budget = TRAIN_SAMPLES_PER_DICT_BYTE * size
    if total > budget:
        step = total / budget
        samples = samples[:: max(1, int(step))]
    try:
        trained = zstandard.train_dictionary(size, samples, level=settings.level, k=COVER_K, d=COVER_D)
    except zstandard.ZstdError as err:  # zstd refuses some sample sets (e.g. all near-identical)
        log.info("dictionary training failed on %d samples (%d bytes): %s", len(samples), total, err)
        return None
    return trained.as_bytes()


def _has_enough(samples: list[bytes], settings: CompressionSettings) -> bool:
    size = sum(min(len(s), TRAIN_PREFIX_BYTES) for s in samples)
    return len(samples) >= settings.min_subset_docs and size >= settings.min_subset_bytes


def train_dictionaries(
    samples_by_subset: Mapping[str, list[bytes]], settings: CompressionSettings, threads: int = 1
) -> dict[str | None, bytes | None]:
    """{subset: dictionary} for subsets with enough sample data, plus {None: shared dictionary}.

    The shared dictionary learns from the subsets that will use it, when they have enough sample text (as
    much as a subset needs for its own), else from all samples: trained on everything, it spent its bytes
    on the big subsets' text, which have their own (on the sample corpus its documents took 156 KB less).
    Dictionaries train concurrently on `threads` threads (zstd releases the GIL while training).
    """
    if not settings.dict_size:
        return {None: None}
    jobs: dict[str | None, list[bytes]] = {}
    for subset, samples in sorted(samples_by_subset.items()):
        if _has_enough(samples, settings):
            jobs[subset] = samples
    sharing = [s for subset, samples in sorted(samples_by_subset.items()) if subset not in jobs for s in samples]
    everything = [s for samples in samples_by_subset.values() for s in samples]
    jobs[None] = sharing if _has_enough(sharing, settings) else everything
    with ThreadPoolExecutor(max(1, threads)) as pool:
        trained = dict(zip(jobs, pool.map(lambda samples: _train(samples, settings), jobs.values()), strict=True))
    return {subset: data for subset, data in trained.items() if data is not None or subset is None}


class Compressor:
    """Compresses each document with its subset's dictionary (or the shared one) at the level its size calls
    for (CompressionSettings.small_level, if set, under small_bytes); keeps raw what does not shrink."""

    def __init__(
        self,
        codec_of_subset: Mapping[str | None, int],
        dictionaries: Mapping[int, bytes | None],
        settings: CompressionSettings,
        threads: int = 1,
    ) -> None:
        self.threads = threads  # zstd threads per batch call (multi_compress_to_buffer)
        self._codec_of_subset = dict(codec_of_subset)
        self._shared = self._codec_of_subset[None]
        small_level = settings.level_of_small()
        self._small_bytes = settings.small_bytes if small_level else 0  # 0: one context per dictionary
        self._cctx: dict[tuple[int, bool], zstandard.ZstdCompressor] = {}
        for codec, data in dictionaries.items():
            self._cctx[codec, False] = self._context(data, settings.level)
            if small_level:
                self._cctx[codec, True] = self._context(data, small_level)

    @staticmethod
    def _context(data: bytes | None, level: int) -> zstandard.ZstdCompressor:
        # Fixed parameters, and the dictionary digested once with the same ones: when the level picks
        # parameters per input size instead, zstd reloads the dictionary for every frame and small
        # documents compress at 30-50 MB/s instead of ~110 (measured on the 300 MB synthetic shard).
        params = zstandard.ZstdCompressionParameters.from_level(
            level, format=FRAME_FORMAT, write_content_size=True, write_checksum=False, write_dict_id=False
        )
        if data is None:
            return zstandard.ZstdCompressor(compression_params=params)
        dictionary = zstandard.ZstdCompressionDict(data)
        dictionary.precompute_compress(compression_params=params)
        return zstandard.ZstdCompressor(compression_params=params, dict_data=dictionary)

    def _key(self, subset: str, data: bytes) -> tuple[int, bool]:
        """(codec id, whether the document is small): which zstd context compresses it."""
        return self._codec_of_subset.get(subset, self._shared), len(data) < self._small_bytes

    def compress(self, subset: str, data: bytes) -> tuple[int, bytes]:
        """(codec id, stored bytes) for one document's UTF-8 text."""
        key = self._key(subset, data)
        frame = self._cctx[key].compress(data)
        if len(frame) >= len(data):
            return RAW, data
        return key[0], frame

    def compress_batch(self, docs: list[tuple[str, bytes]]) -> list[tuple[int, bytes]]:
        """compress() of each (subset, data), as one zstd call per zstd context (dictionary and level).

        Grouping keeps each zstd context's tables in cache (interleaving 10 contexts made ingest of 22
        subsets 2x slower), and one call per group releases the GIL once, so the writer thread runs
        beside the parsing thread instead of waiting to reacquire the GIL after every small document.
        """
        out: list[tuple[int, bytes]] = [(RAW, b"")] * len(docs)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, (subset, data) in enumerate(docs):
            if data:  # an empty text stays raw (zstd refuses a batch of only empty inputs)
                groups.setdefault(self._key(subset, data), []).append(i)
        for key, indices in groups.items():
            frames = self._cctx[key].multi_compress_to_buffer([docs[i][1] for i in indices], threads=self.threads)
            for i, frame in zip(indices, frames, strict=True):
                data = docs[i][1]
                out[i] = (RAW, data) if len(frame) >= len(data) else (key[0], frame.tobytes())
        return out


class Decompressor:
    """Inverse of Compressor for one partition; checks the frame's declared size before allocating."""

    def __init__(self, dictionaries: Iterable[tuple[int, bytes | None]]) -> None:
        self._dctx: dict[int, zstandard.ZstdDecompressor] = {}
        for codec, data in dictionaries:
            try:
                dict_data = zstandard.ZstdCompressionDict(data) if data is not None else None
                self._dctx[codec] = zstandard.ZstdDecompressor(dict_data=dict_data, format=FRAME_FORMAT)
            except zstandard.ZstdError as err:
                raise CorruptDocumentError(
                    f"zstd dictionary {codec} is damaged ({err}); run `pilestore verify`"
                ) from err

    def decompress(self, codec: int, stored: bytes, size: int) -> bytes:
        """The document's UTF-8 bytes; CorruptDocumentError (the caller adds where) if they cannot be recovered."""
        if codec == RAW:
            if len(stored) != size:
                raise CorruptDocumentError(f"stored {len(stored)} raw bytes, expected {size}")
            return stored
        dctx = self._dctx.get(codec)
        if dctx is None:
            raise CorruptDocumentError(f"unknown codec {codec}")
        try:
            # checked first: a damaged header must not make it allocate gigabytes
            declared = zstandard.get_frame_parameters(stored, format=FRAME_FORMAT).content_size
            if declared != size:
                raise CorruptDocumentError(f"zstd frame declares {declared} bytes, expected {size}")
            data = dctx.decompress(stored)
        except zstandard.ZstdError as err:
            raise CorruptDocumentError(f"zstd frame does not decompress: {err}") from err
        if len(data) != size:
            raise CorruptDocumentError(f"decompressed to {len(data)} bytes, expected {size}")
        return data
