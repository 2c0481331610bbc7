from __future__ import annotations

import random

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pilestore.codec import RAW, CompressionSettings, Compressor, Decompressor, train_dictionaries
from pilestore.errors import CorruptDocumentError


@pytest.mark.parametrize(
    "kwargs",
    [
        {"level": 0},
        {"level": 23},
        {"small_level": 0},
        {"small_level": 23},
        {"small_bytes": -1},
        {"dict_size": 10},
        {"sample_bytes": -1},
        {"min_subset_docs": 0},
    ],
)
def test_bad_settings_name_the_field(kwargs: dict) -> None:
    field = next(iter(kwargs))
    with pytest.raises(ValueError, match=field):
        CompressionSettings(**kwargs)


def _corpus(seed: int = 0) -> dict[str, list[bytes]]:
    rng = random.Random(seed)
    code = ["int", "return", "if", "(", ")", "{", "}", "static", "void", "char", "*", ";"]
    prose = ["the", "of", "and", "a", "to", "in", "was", "he", "that", "it", "his", "her"]
    return {
        "Github": [" ".join(rng.choices(code, k=rng.randint(50, 400))).encode() for _ in range(300)],
        "Pile-CC": [" ".join(rng.choices(prose, k=rng.randint(50, 400))).encode() for _ in range(300)],
        "Tiny": [b"tiny subset" for _ in range(3)],
    }


def _codec(settings: CompressionSettings) -> tuple[Compressor, Decompressor]:
    dicts = train_dictionaries(_corpus(), settings)
    ids = {subset: i + 1 for i, subset in enumerate(dicts)}
    return Compressor(ids, {ids[s]: d for s, d in dicts.items()}, settings), Decompressor(
        (ids[s], d) for s, d in dicts.items()
    )


def test_big_subsets_get_their_own_dictionary_small_ones_share() -> None:
    dicts = train_dictionaries(_corpus(), CompressionSettings(min_subset_bytes=10_000))
    assert set(dicts) == {"Github", "Pile-CC", None}
    assert all(d is not None and len(d) <= 112 * 1024 for d in dicts.values())


def _shared_frames_bytes(dicts: dict, docs: list[bytes]) -> int:
    compressor = Compressor({None: 1}, {1: dicts[None]}, CompressionSettings())
    return sum(len(compressor.compress("any", d)[1]) for d in docs)


def test_shared_dictionary_learns_from_the_subsets_that_share_it() -> None:
    rng = random.Random(3)
    words = {name: ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=7)) for _ in range(300)] for name in "ABCD"}

    def docs(name: str, n: int) -> list[bytes]:
        return [" ".join(rng.choices(words[name], k=rng.randint(100, 300))).encode() for _ in range(n)]

    samples = {"A": docs("A", 400), "B": docs("B", 400), "C": docs("C", 40), "D": docs("D", 40)}
    settings = CompressionSettings(dict_size=16 * 1024, min_subset_bytes=120_000)
    dicts = train_dictionaries(samples, settings)
    assert set(dicts) == {"A", "B", None}  # C and D share
    trained_on_all = train_dictionaries(samples, CompressionSettings(dict_size=16 * 1024, min_subset_bytes=10**9))
    assert set(trained_on_all) == {None}  # nothing has enough for its own: the shared one learns from everything
    held_out = docs("C", 20) + docs("D", 20)
    assert _shared_frames_bytes(dicts, held_out) < 0.9 * _shared_frames_bytes(trained_on_all, held_out)


def test_shared_dictionary_learns_from_everything_when_the_sharing_subsets_are_too_small() -> None:
    samples = _corpus()
    settings = CompressionSettings(min_subset_bytes=10_000)
    shared = train_dictionaries(samples, settings)[None]
    assert shared == train_dictionaries({"all": [s for v in samples.values() for s in v]}, settings)[None]


def test_no_dictionaries_when_dict_size_is_zero() -> None:
    assert train_dictionaries(_corpus(), CompressionSettings(dict_size=0)) == {None: None}


@settings(deadline=None, max_examples=50)
@given(st.sampled_from(["Github", "Pile-CC", "Tiny", "Unseen"]), st.binary(max_size=3000))
def test_any_bytes_round_trip(subset: str, data: bytes) -> None:
    compressor, decompressor = _CODEC
    codec, stored = compressor.compress(subset, data)
    assert len(stored) <= len(data)
    assert decompressor.decompress(codec, stored, len(data)) == data


_CODEC = _codec(CompressionSettings(min_subset_bytes=10_000))


def test_incompressible_documents_are_stored_raw() -> None:
    compressor, _ = _CODEC
    data = random.Random(1).randbytes(500)
    assert compressor.compress("Github", data) == (RAW, data)


def test_batch_compression_equals_one_by_one() -> None:
    compressor, _ = _CODEC
    corpus = _corpus(3)
    docs = [(s, d) for s in corpus for d in corpus[s][:20]]
    random.Random(0).shuffle(docs)
    assert compressor.compress_batch(docs) == [compressor.compress(s, d) for s, d in docs]


def test_empty_texts_in_a_batch_are_stored_raw_also_when_a_dictionary_gets_only_those() -> None:
    """Empty text is a document; zstd refuses a batch call of only empty inputs, as happened when the
    documents of one dictionary in a batch (or of a whole source) were all empty."""
    compressor, decompressor = _CODEC
    for docs in ([("Github", b""), ("Github", b"")], [("Github", b""), ("Pile-CC", b"the of and " * 20)]):
        stored = compressor.compress_batch(docs)
        assert stored == [compressor.compress(s, d) for s, d in docs]
        assert stored[0] == (RAW, b"")
        back = [decompressor.decompress(c, b, len(d)) for (c, b), (_, d) in zip(stored, docs, strict=True)]
        assert back == [d for _, d in docs]


def _frame_at(level: int, dictionary: bytes | None, data: bytes) -> bytes:
    """The frame zstd makes of `data` at `level` with `dictionary`, independently of Compressor."""
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        write_content_size=True,
        write_checksum=False,
        write_dict_id=False,
    )
    if dictionary is None:
        return zstandard.ZstdCompressor(compression_params=params).compress(data)
    digested = zstandard.ZstdCompressionDict(dictionary)
    digested.precompute_compress(compression_params=params)
    return zstandard.ZstdCompressor(compression_params=params, dict_data=digested).compress(data)


@pytest.mark.parametrize(("level", "small_level"), [(3, None), (3, 5), (3, 9), (3, 3), (3, 1), (7, 5)])
def test_documents_under_small_bytes_compress_at_small_level_never_below_level(
    level: int, small_level: int | None
) -> None:
    settings = CompressionSettings(level=level, small_level=small_level, small_bytes=1000, min_subset_bytes=10_000)
    dicts = train_dictionaries(_corpus(), settings)
    ids = {subset: i + 1 for i, subset in enumerate(dicts)}
    compressor = Compressor(ids, {ids[s]: d for s, d in dicts.items()}, settings)
    decompressor = Decompressor((ids[s], d) for s, d in dicts.items())
    docs = [("Pile-CC", d) for d in _corpus(5)["Pile-CC"][:40]]
    assert {len(d) < 1000 for _, d in docs} == {True, False}  # both kinds
    stored = compressor.compress_batch(docs)
    assert stored == [compressor.compress(s, d) for s, d in docs]
    for (codec, frame), (_, data) in zip(stored, docs, strict=True):
        expected = max(level, small_level or level) if len(data) < 1000 else level
        assert codec == ids["Pile-CC"] and frame == _frame_at(expected, dicts["Pile-CC"], data)
        assert decompressor.decompress(codec, frame, len(data)) == data


def test_frames_are_zstd_frames_without_the_magic_number() -> None:
    compressor, decompressor = _CODEC
    data = b"the of and a to in " * 100
    codec, frame = compressor.compress("Pile-CC", data)
    assert codec != RAW and not frame.startswith(b"\x28\xb5\x2f\xfd")
    dictionary = {s: d for s, d in train_dictionaries(_corpus(), CompressionSettings(min_subset_bytes=10_000)).items()}
    dctx = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary["Pile-CC"]))
    assert dctx.decompress(b"\x28\xb5\x2f\xfd" + frame) == data  # with the magic put back: a standard frame
    assert decompressor.decompress(codec, frame, len(data)) == data


def test_dictionaries_shrink_small_documents() -> None:
    compressor, _ = _CODEC
    plain = Compressor({None: 1}, {1: None}, CompressionSettings())
    docs = _corpus(7)["Github"][:50]
    assert sum(len(compressor.compress("Github", d)[1]) for d in docs) < 0.9 * sum(
        len(plain.compress("Github", d)[1]) for d in docs
    )


def test_damaged_frames_raise_corrupt_document_error() -> None:
    compressor, decompressor = _CODEC
    data = b"hello world " * 200
    codec, stored = compressor.compress("Pile-CC", data)
    with pytest.raises(CorruptDocumentError, match="declares"):
        decompressor.decompress(codec, stored, len(data) + 1)
    broken = bytearray(stored)
    broken[len(broken) // 2] ^= 0x55
    try:
        out = decompressor.decompress(codec, bytes(broken), len(data))
    except CorruptDocumentError:
        return
    assert out != data  # zstd may decode garbage without noticing; the store's checksum catches that case
    with pytest.raises(CorruptDocumentError, match="unknown codec"):
        decompressor.decompress(99, stored, len(data))
