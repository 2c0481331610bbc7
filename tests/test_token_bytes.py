"""Per-token byte lengths on disk (token_bytes.py): one byte a token plus pairs for long ones, read back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilestore import token_bytes
from pilestore.token_bytes import ByteLengthsError

# a document: its tokens' byte lengths (0 happens: a token whose end does not move; 255+ goes to the pairs)
_LENGTH = st.one_of(st.integers(0, 6), st.integers(0, 300), st.sampled_from([254, 255, 256, 70_000, 2**33]))
_DOCS = st.lists(st.lists(_LENGTH, max_size=40), max_size=12)


def _write(folder: Path, docs: list[list[int]], batches: int) -> tuple[Path, np.ndarray]:
    """Encode the documents in `batches` calls, as tokenize does, into folder/p.lens and p.long."""
    lens, long = folder / "p.lens", folder / "p.long"
    position = 0
    with open(lens, "wb") as lens_out, open(long, "wb") as long_out:
        for part in np.array_split(np.arange(len(docs)), batches):
            chosen = [docs[d] for d in part]
            counts = np.array([len(d) for d in chosen], dtype=np.int64)
            ends = np.concatenate([np.cumsum(d, dtype=np.int64) for d in chosen] or [np.zeros(0, np.int64)])
            lengths, pairs = token_bytes.encode(ends, counts, position)
            lens_out.write(lengths.tobytes())
            long_out.write(pairs.tobytes())
            position += len(lengths)
    return lens, token_bytes.read_pairs(long, position)


@settings(deadline=None, max_examples=200)
@given(_DOCS, st.integers(1, 4), st.sampled_from([1, 3, 64, 1 << 22]), st.randoms(use_true_random=False))
def test_lengths_round_trip_and_sum_exactly(docs: list[list[int]], batches: int, chunk: int, rnd) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        lens, pairs = _write(Path(tmp), docs, batches)
        flat = np.array([n for d in docs for n in d], dtype=np.int64)
        assert lens.stat().st_size == len(flat)  # one byte a token
        assert pairs[:, 1].tolist() == [n for n in flat.tolist() if n >= 255]
        stored = np.fromfile(lens, np.uint8)
        assert np.array_equal(token_bytes.exact(stored, pairs, 0), flat)
        first = 0
        for d in docs:  # each document's ends, from its own start
            got = token_bytes.byte_ends(stored[first : first + len(d)], pairs, first)
            assert got.tolist() == np.cumsum(d, dtype=np.int64).tolist()
            first += len(d)
        prefix = np.concatenate(([0], np.cumsum(flat)))
        positions = np.array([rnd.randint(0, len(flat)) for _ in range(30)] + [len(flat), 0], dtype=np.int64)
        assert token_bytes.prefix_sums(lens, pairs, positions, chunk=chunk).tolist() == prefix[positions].tolist()
        # rising positions asked a few at a time, as an index build asks span by span: one pass over the file
        rising = np.sort(positions)
        with token_bytes.PrefixSums(lens, pairs, chunk) as sums:
            got = [sums.at(part) for part in np.array_split(rising, rnd.randint(1, 5))]
        assert np.concatenate(got).tolist() == prefix[rising].tolist()


def test_a_short_file_and_disagreeing_pairs_are_named(tmp_path: Path) -> None:
    lens, pairs = _write(tmp_path, [[3, 300, 2], [1, 1, 999]], 1)
    assert pairs.tolist() == [[1, 300], [5, 999]]
    with pytest.raises(ByteLengthsError, match=r"p.lens: 6 length bytes, fewer than token 9 needs"):
        token_bytes.prefix_sums(lens, pairs, np.array([2, 9]))
    with token_bytes.PrefixSums(lens, pairs, chunk=2) as sums:
        assert sums.at(np.array([4, 5])).tolist() == [306, 307]
        with pytest.raises(ValueError, match="token position 1 is behind the chunk read"):
            sums.at(np.array([1]))  # the file is not read again from its start
    with pytest.raises(ByteLengthsError, match="p.lens: the length bytes of tokens 0..6 and the pairs in .*p.long"):
        token_bytes.prefix_sums(lens, pairs[:1], np.array([6]))  # a 255 without its pair
    data = bytearray(lens.read_bytes())
    data[1] = 7  # a pair without its 255
    lens.write_bytes(bytes(data))
    with pytest.raises(ByteLengthsError, match="disagree"):
        token_bytes.prefix_sums(lens, pairs, np.array([6]))
    long = tmp_path / "p.long"
    long.write_bytes(long.read_bytes()[:-3])
    with pytest.raises(ByteLengthsError, match="not a whole number of"):
        token_bytes.read_pairs(long, 6)
    for bad in ([[5, 999], [1, 300]], [[1, 300], [6, 999]], [[1, 254]]):  # not rising, outside, too short
        long.write_bytes(np.array(bad, "<i8").tobytes())
        with pytest.raises(ByteLengthsError, match="damaged"):
            token_bytes.read_pairs(long, 6)


def test_ends_that_go_back_are_refused() -> None:
    with pytest.raises(ValueError, match="go back at token 2"):
        token_bytes.encode(np.array([1, 5, 4]), np.array([3]), 0)
