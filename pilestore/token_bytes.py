"""How many UTF-8 bytes of its document each token covers: one byte a token on disk, exact sums read back.

    p00000.lens   uint8 per token: the bytes from the end of the token before it (the start of its document
                  for a document's first token) to its own end; 255 means "see .long"
    p00000.long   int64 pairs (position of the token in the partition, its length), one per token of 255 bytes
                  or more, in position order: usually none, as sentencepiece pieces are at most 16 characters;
                  a long one follows a run of whitespace that the normaliser folded, or ends a document

    document  "ab  cd"            tokens  "▁ab" "▁cd"     ends 2 6     lengths 2 4
    bytes of targets j..k = lengths[j..k] summed; a token's end = its document's lengths summed up to it

Summed over a document, the lengths give its UTF-8 size (the last token ends at its last byte). A first format
stored each token's end as uint32, twice the size of the uint16 token ids; lengths take half their size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import PilestoreError

ESCAPE = 255  # a length byte of 255: the real length is in the .long pairs
LONG = np.dtype("<i8")  # .long holds (position, length) pairs of these


class ByteLengthsError(PilestoreError):
    """Byte lengths that do not agree with each other (a damaged .lens or .long file)."""


def encode(ends: np.ndarray, counts: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 lengths, [n, 2] int64 long pairs) for a batch of documents: `ends` flat, `counts[d]` tokens of
    document d, each document's ends rising from its start; the batch's first token is token `first` of its
    partition (the pairs' positions count from the partition's first token)."""
    ends = np.asarray(ends, dtype=np.int64)
    lengths = np.diff(ends, prepend=0)
    counts = np.asarray(counts, dtype=np.int64)
    starts = (np.cumsum(counts) - counts)[counts > 0]
    lengths[starts] = ends[starts]
    if len(lengths) and lengths.min() < 0:
        raise ValueError(f"byte ends go back at token {int(np.argmax(lengths < 0))} of the batch")
    at = np.flatnonzero(lengths >= ESCAPE)
    pairs = np.stack((at + first, lengths[at])).T.astype(LONG)
    return np.minimum(lengths, ESCAPE).astype(np.uint8), pairs.reshape(-1, 2)


def exact(lengths: np.ndarray, pairs: np.ndarray, first: int) -> np.ndarray:
    """The int64 lengths of tokens first, first + 1, ... given their length bytes and the partition's pairs."""
    out = lengths.astype(np.int64)
    inside = slice(*np.searchsorted(pairs[:, 0], (first, first + len(out))))
    out[pairs[inside, 0] - first] = pairs[inside, 1]
    return out


def byte_ends(lengths: np.ndarray, pairs: np.ndarray, first: int) -> np.ndarray:
    """The byte ends of one document's tokens, whose length bytes are `lengths`, its first token at `first`."""
    return np.cumsum(exact(lengths, pairs, first))


def read_pairs(path: Path, tokens: int) -> np.ndarray:
    """A .long file's pairs, checked: whole pairs, positions rising inside the partition's `tokens`, lengths of
    at least 255."""
    raw = path.read_bytes()
    if len(raw) % (2 * LONG.itemsize):
        raise ByteLengthsError(f"{path}: {len(raw)} bytes is not a whole number of (position, length) pairs")
    pairs = np.frombuffer(raw, LONG).reshape(-1, 2)
    positions = pairs[:, 0]
    if len(pairs) and (
        positions[0] < 0 or positions[-1] >= tokens or (np.diff(positions) <= 0).any() or pairs[:, 1].min() < ESCAPE
    ):
        raise ByteLengthsError(f"{path}: its pairs do not rise inside the partition's {tokens} tokens, or hold a "
                               "length under 255: the file is damaged; run `pilestore verify`")  # fmt: skip
    return pairs


def prefix_sums(path: Path, pairs: np.ndarray, positions: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """For each position k, the bytes tokens 0..k-1 of the partition cover (k may be the token count).

    The .lens file is read front to back with pread, `chunk` tokens at a time, only as far as the largest
    position: memory stays bounded and nothing is mapped. Every length byte of 255 must have its pair, and
    every pair its 255, or the files are damaged."""
    positions = np.asarray(positions, dtype=np.int64)
    out = np.empty(len(positions), dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    wanted = positions[order]
    if len(wanted) and wanted[0] < 0:
        raise ValueError(f"negative token position {int(wanted[0])}")
    base, lo, i = 0, 0, 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while i < len(wanted):
            data = np.frombuffer(os.pread(fd, chunk, lo), np.uint8)
            if not len(data) and wanted[i] > lo:
                raise ByteLengthsError(
                    f"{path}: {lo} length bytes, fewer than token {int(wanted[-1])} needs: the file is short; "
                    "run `pilestore verify`"
                )
            lengths = exact(data, pairs, lo)
            escaped = np.count_nonzero(data == ESCAPE)
            inside = np.searchsorted(pairs[:, 0], (lo, lo + len(data)))
            if escaped != inside[1] - inside[0] or (data[pairs[inside[0] : inside[1], 0] - lo] != ESCAPE).any():
                raise ByteLengthsError(
                    f"{path}: the length bytes of tokens {lo}..{lo + len(data)} and the pairs in "
                    f"{path.with_suffix('.long')} disagree: a file is damaged; run `pilestore verify`"
                )
            summed = np.concatenate(([0], np.cumsum(lengths)))
            j = int(np.searchsorted(wanted, lo + len(data), side="right"))
            out[order[i:j]] = base + summed[wanted[i:j] - lo]
            base += int(summed[-1])
            lo += len(data)
            i = j
    finally:
        os.close(fd)
    return out
