"""Assembling a batch of samples from a sample index's records and the token files: numba kernels for
SampleIndex.gather (samples.py), which is all they are for.

    plan(...)   check every sample's records (bounds, checksum, spans that fit, tokens inside their file) and
                count the batch's spans and padded samples: what the batch's buffer needs (batch_layout)
    fill(...)   lay the spans out in that buffer (the fields present) and list the token blocks they were copied
                from, which the caller hashes (xxh3, in Python) before the batch is handed out

Before these kernels a batch took ~30 numpy calls and a Python loop per span and per block (a batch of 16: ~60
calls, ~20 us a sample; a bare slice copy of the same windows costs ~2.3 us). Only SampleIndex.gather imports
this module: opening a store or a dataset, ds[i] and `pilestore sample` do not import numba.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from .jit import kernel
from .samples import _SAMPLE_WORDS, FIELDS, FIXED, IGNORE, RAGGED, SAMPLE_RECORD, SCALARS, SPAN_RECORD
from .tokens import BLOCK

# plan's status: every record fine / sample `where` damaged / span `where`'s tokens outside their file / ids[where]
# not a sample of the index
OK, DAMAGED, OUTSIDE, OUT_OF_RANGE = 0, 1, 2, 3
PART_SHIFT = 40  # fill's block keys: partition << 40 | block (2**40 blocks of 4 KiB per partition)
BLOCK_MASK = (1 << PART_SHIFT) - 1
# fill's places: where each of these begins in the batch's buffer (fill's body is written for this order)
PLACED = (*FIXED, *SCALARS, *(name for key in RAGGED for name in (key, f"{key}_offsets")))
_FIELD_PLACES = np.array([PLACED.index(key) for key in FIELDS])  # FIELDS among them


def _word(dtype: np.dtype, field: str, size: int) -> int:
    """Where `field` of a record lies, counted in items of `size` bytes (the kernels read records as words)."""
    offset = dtype.fields[field][1]
    assert offset % size == 0, f"{field} is not aligned to {size} bytes"
    return offset // size


# Record fields as word positions: the kernels read the records through integer views of them.
_SPAN_BEGIN, _SAMPLE_BYTES = _word(SAMPLE_RECORD, "span_begin", 8), _word(SAMPLE_RECORD, "n_bytes", 8)
_N_SPANS, _CHECK = _word(SAMPLE_RECORD, "n_spans", 4), _word(SAMPLE_RECORD, "check", 8)
_DOC, _OFFSET, _SPAN_BYTES = (_word(SPAN_RECORD, field, 8) for field in ("doc", "offset", "n_bytes"))
_CONTEXT, _TARGET = _word(SPAN_RECORD, "context", 4), _word(SPAN_RECORD, "target", 4)
_SUBSET, _EOD = _word(SPAN_RECORD, "subset", 2), _word(SPAN_RECORD, "eod", 1)


@kernel(nogil=True)
def plan(
    ids: np.ndarray,
    sample_i64: np.ndarray,
    sample_i32: np.ndarray,
    sample_u64: np.ndarray,
    span_i64: np.ndarray,
    span_i32: np.ndarray,
    span_u8: np.ndarray,
    span_u64: np.ndarray,
    sample_mult: np.ndarray,
    span_mult: np.ndarray,
    size: int,
    doc_first: np.ndarray,
    part_tokens: np.ndarray,
    itemsize: int,
) -> tuple[int, int, int, int, int]:
    """(status, where, spans, padded samples, token blocks read with repeats: what fill's list of blocks needs)
    of samples `ids` (rows of the sample records; negative ones count from the end and are rewritten in place as
    the rows they name; one outside [-n, n) is OUT_OF_RANGE, where: its place in ids): a sample whose
    record or span records fail their bounds or checksum, or whose spans do not fit seq_len + 1 = size, is
    DAMAGED (where: its place in ids); a span whose tokens lie outside its partition's token file (part_tokens:
    tokens per file; doc_first: each partition's first document, then the total) is OUTSIDE (where: the span)."""
    n_samples, n_spans = sample_i64.shape[0], span_i64.shape[0]
    for r in range(len(ids)):
        if ids[r] < -n_samples or ids[r] >= n_samples:
            return OUT_OF_RANGE, r, 0, 0, 0
        if ids[r] < 0:
            ids[r] += n_samples
    total, padded, blocks = 0, 0, 0
    for r in range(len(ids)):
        i = ids[r]
        first, count = sample_i64[i, _SPAN_BEGIN], np.int64(sample_i32[i, _N_SPANS])
        if first < 0 or count < 0 or count > size or first + count > n_spans:
            return DAMAGED, r, 0, 0, 0
        check = np.uint64(0)
        for j in range(_SAMPLE_WORDS):
            check += sample_u64[i, j] * sample_mult[j]
        for k in range(first, first + count):
            for j in range(span_u64.shape[1]):
                check += span_u64[k, j] * span_mult[j]
        if check != sample_u64[i, _CHECK]:
            return DAMAGED, r, 0, 0, 0
        used = 0
        for k in range(first, first + count):
            context, target = np.int64(span_i32[k, _CONTEXT]), np.int64(span_i32[k, _TARGET])
            if context < 0 or target < 0:
                return DAMAGED, r, 0, 0, 0
            used += span_u8[k, _EOD] + context + target
            p = np.searchsorted(doc_first, span_i64[k, _DOC], side="right") - 1
            offset = span_i64[k, _OFFSET]
            if p < 0 or p >= len(part_tokens) or offset < 0 or offset + context + target > part_tokens[p]:
                return OUTSIDE, k, 0, 0, 0
            if context + target > 0:
                blocks += ((offset + context + target) * itemsize - 1) // BLOCK - offset * itemsize // BLOCK + 1
        if used > size:
            return DAMAGED, r, 0, 0, 0
        padded += used < size
        total += count
    return OK, 0, total, padded, blocks


@kernel(nogil=True)
def fill(
    ids: np.ndarray,
    sample_i64: np.ndarray,
    sample_i32: np.ndarray,
    span_i64: np.ndarray,
    span_i32: np.ndarray,
    span_i16: np.ndarray,
    span_u8: np.ndarray,
    doc_first: np.ndarray,
    addresses: np.ndarray,
    part_tokens: np.ndarray,
    like: np.ndarray,
    eod_id: int,
    size: int,
    blocks: int,
    buffer: np.ndarray,
    places: np.ndarray,
) -> np.ndarray:
    """Samples `ids` (checked by plan) into the batch's fields, as SampleIndex.gather documents them: span k is
    x-tokens [eod] * eod + tokens[offset : offset + context + target] of its partition's file (token_files), laid
    out from its slot in its sample; labels[q - 1] = x[q] for its target x-tokens, IGNORE for its [eod] and
    context x-tokens and after the last span (padding: input id 0, position 0); positions restart with each span.

    blocks: plan's count of token blocks. buffer: the batch's one buffer; places: where each of PLACED begins in
    it (samples.batch_layout), -1 for the fields not built.
    Returns the token blocks the spans were copied from (when input_ids or labels were written), sorted and
    unique, as partition << PART_SHIFT | block."""
    b, width = len(ids), size - 1
    input_ids, labels = _rows(buffer, places[0], b, width), _rows(buffer, places[1], b, width)
    positions, n_bytes, sample = _rows(buffer, places[2], b, width), _tail(buffer, places[3]), _tail(buffer, places[4])
    doc_lengths, doc_offsets = _tail(buffer, places[5]), _tail(buffer, places[6])
    span_bytes, span_offsets = _tail(buffer, places[7]), _tail(buffer, places[8])
    subset, subset_offsets = _tail(buffer, places[9]), _tail(buffer, places[10])
    wanted = places[_FIELD_PLACES] >= 0  # per field, in FIELDS order
    reads = wanted[0] or wanted[1]
    itemsize = like.itemsize
    keys = np.empty(blocks if reads else 0, np.int64)
    m, spans, docs = 0, 0, 0
    for r in range(b):
        i = ids[r]
        first, count = sample_i64[i, _SPAN_BEGIN], np.int64(sample_i32[i, _N_SPANS])
        if wanted[3]:
            n_bytes[r] = sample_i64[i, _SAMPLE_BYTES]
        if wanted[4]:
            sample[r] = i
        _offsets(wanted, r, docs, spans, doc_offsets, span_offsets, subset_offsets)
        at = 0
        for k in range(first, first + count):
            eod = np.int64(span_u8[k, _EOD])
            context, target = np.int64(span_i32[k, _CONTEXT]), np.int64(span_i32[k, _TARGET])
            n = eod + context + target
            stop = min(n, width - at)  # the span's x-tokens that are inputs (a sample's last x-token is a label only)
            if reads:
                p = np.searchsorted(doc_first, span_i64[k, _DOC], side="right") - 1
                part, begin = numba.carray(_pointer(addresses[p], like), part_tokens[p]), span_i64[k, _OFFSET]
                source = begin - eod  # x-token q of the span (q >= eod) is part[source + q]
                if wanted[0]:
                    if eod and stop > 0:
                        input_ids[r, at] = eod_id
                    if stop > eod:
                        input_ids[r, at + eod : at + stop] = part[begin : source + stop]
                if wanted[1]:  # labels[j] = x[j + 1]: x-tokens from max(at, 1) on, IGNORE before the targets
                    low, targets = max(at, 1), max(at + n - target, 1)
                    if targets > low:
                        labels[r, low - 1 : targets - 1] = IGNORE
                    if at + n > targets:
                        labels[r, targets - 1 : at + n - 1] = part[source + targets - at : source + n]
                if context + target > 0:
                    last = ((begin + context + target) * itemsize - 1) // BLOCK
                    for block in range(begin * itemsize // BLOCK, last + 1):
                        keys[m] = (p << PART_SHIFT) | block
                        m += 1
            if wanted[2]:
                for q in range(max(stop, 0)):
                    positions[r, at + q] = q
            if wanted[5]:
                doc_lengths[docs] = n
            if wanted[6]:
                span_bytes[spans] = span_i64[k, _SPAN_BYTES]
            if wanted[7]:
                subset[spans] = span_i16[k, _SUBSET]
            docs += 1
            spans += 1
            at += n
        if at < size:  # padding
            if wanted[0]:
                input_ids[r, at:] = 0
            if wanted[1]:
                labels[r, max(at, 1) - 1 :] = IGNORE
            if wanted[2]:
                positions[r, at:] = 0
            if wanted[5]:
                doc_lengths[docs] = size - at
            docs += 1
    _offsets(wanted, b, docs, spans, doc_offsets, span_offsets, subset_offsets)
    keys = np.sort(keys[:m])
    unique = 0
    for j in range(m):
        if j == 0 or keys[j] != keys[j - 1]:
            keys[unique] = keys[j]
            unique += 1
    return keys[:unique]


@kernel(nogil=True, inline="always")
def _rows(buffer: np.ndarray, at: int, b: int, width: int) -> np.ndarray:
    """A (b, width) field of the buffer from `at` on; empty where at < 0 (not built)."""
    if at < 0:
        return buffer[:0].reshape((0, width))
    return buffer[at : at + b * width].reshape((b, width))


@kernel(nogil=True, inline="always")
def _tail(buffer: np.ndarray, at: int) -> np.ndarray:
    """A one-dimensional field of the buffer from `at` on (written no further than its length); empty where at < 0."""
    return buffer[:0] if at < 0 else buffer[at:]


@kernel(nogil=True, inline="always")
def _offsets(
    wanted: np.ndarray,
    r: int,
    docs: int,
    spans: int,
    doc_offsets: np.ndarray,
    span_offsets: np.ndarray,
    subset_offsets: np.ndarray,
) -> None:
    """Where sample r's doc_lengths, span_bytes and subset begin (r = B: where the batch's end)."""
    if wanted[5]:
        doc_offsets[r] = docs
    if wanted[6]:
        span_offsets[r] = spans
    if wanted[7]:
        subset_offsets[r] = spans


def token_files(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The partitions' token files as fill takes them: their addresses, lengths and an empty array of their
    dtype. The caller keeps the arrays alive. (Not a numba typed list: making one compiles its methods in every
    process, 0.5 s at the first batch of each DataLoader worker.)"""
    addresses = np.array([array.ctypes.data for array in arrays], dtype=np.int64)
    lengths = np.array([len(array) for array in arrays], dtype=np.int64)
    dtypes = {array.dtype for array in arrays}
    assert len(dtypes) <= 1, f"token files of several dtypes: {dtypes}"
    return addresses, lengths, np.empty(0, dtypes.pop() if dtypes else np.uint16)


@intrinsic
def _pointer(typingctx: Any, address: Any, like: Any) -> Any:
    """address (int64) as a pointer to items of like's dtype, for numba.carray."""
    signature = types.CPointer(like.dtype)(address, like)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return signature, codegen
