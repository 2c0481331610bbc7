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
    """For each position k, the bytes tokens 0..k-1 of the partition cover (k may be the token count): one
    PrefixSums call."""
    with PrefixSums(path, pairs, chunk) as sums:
        return sums.at(positions)


class PrefixSums:
    """prefix_sums for positions that never go back from one call of `at` to the next: the .lens file is read
    front to back once, with pread, `chunk` tokens at a time and only as far as the largest position, however
    many calls ask. Memory stays bounded and nothing is mapped. Every length byte of 255 must have its pair,
    and every pair its 255, or the files are damaged."""

    def __init__(self, path: Path, pairs: np.ndarray, chunk: int = 1 << 20) -> None:
        self.path, self.pairs, self.chunk = path, pairs, chunk
        self._fd = os.open(path, os.O_RDONLY)
        self._lo = 0  # the loaded chunk's first token
        self._base = 0  # bytes of the tokens before it
        self._summed: np.ndarray | None = None  # bytes of its first 0, 1, ..., all tokens

    def __enter__(self) -> PrefixSums:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def at(self, positions: np.ndarray) -> np.ndarray:
        """For each position k (in any order within a call, none before the chunk the previous call ended in), the
        bytes of tokens 0..k-1."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty(len(positions), dtype=np.int64)
        order = np.argsort(positions, kind="stable")
        wanted = positions[order]
        if len(wanted) and wanted[0] < 0:
            raise ValueError(f"negative token position {int(wanted[0])}")
        if len(wanted) and wanted[0] < self._lo:
            raise ValueError(f"token position {int(wanted[0])} is behind the chunk read (from {self._lo})")
        i = 0
        while i < len(wanted):
            if self._summed is None or wanted[i] > self._lo + len(self._summed) - 1:
                self._next(int(wanted[i]))
                continue
            j = int(np.searchsorted(wanted, self._lo + len(self._summed) - 1, side="right"))
            out[order[i:j]] = self._base + self._summed[wanted[i:j] - self._lo]
            i = j
        return out

    def _next(self, needed: int) -> None:
        """Load the chunk after the loaded one (the first at the start); `needed` is the position asked for."""
        if self._summed is not None:
            self._base += int(self._summed[-1])
            self._lo += len(self._summed) - 1
        lo = self._lo
        data = np.frombuffer(os.pread(self._fd, self.chunk, lo), np.uint8)
        if not len(data) and needed > lo:
            raise ByteLengthsError(
                f"{self.path}: {lo} length bytes, fewer than token {needed} needs: the file is short; "
                "run `pilestore verify`"
            )
        pairs = self.pairs
        escaped = np.count_nonzero(data == ESCAPE)
        inside = np.searchsorted(pairs[:, 0], (lo, lo + len(data)))
        if escaped != inside[1] - inside[0] or (data[pairs[inside[0] : inside[1], 0] - lo] != ESCAPE).any():
            raise ByteLengthsError(
                f"{self.path}: the length bytes of tokens {lo}..{lo + len(data)} and the pairs in "
                f"{self.path.with_suffix('.long')} disagree: a file is damaged; run `pilestore verify`"
            )
        self._summed = np.concatenate(([0], np.cumsum(exact(data, pairs, lo))))
