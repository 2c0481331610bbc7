from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from pilestore.errors import LineError, SourceError
from pilestore.shards import SourceReader, detect_format, iter_lines, parse_line

from .conftest import read_source_lines


def test_format_is_told_by_magic_bytes_not_by_name(tmp_path: Path) -> None:
    zst = tmp_path / "looks_plain.jsonl"
    zst.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "a"}\n'))
    plain = tmp_path / "looks_compressed.jsonl.zst"
    plain.write_bytes(b'\xef\xbb\xbf  {"text": "a"}\n')
    assert detect_format(zst) == "zstd"
    assert detect_format(plain) == "jsonl"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (gzip.compress(b'{"text": "a"}\n'), "gzip-compressed"),
        (b"\x00\x01binary junk", "neither zstd"),
        (b"text,meta\nhello,world\n", "neither zstd"),
    ],
)
def test_unsupported_files_are_refused_by_name(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl.zst"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message) as err:
        detect_format(path)
    assert str(path) in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file") as err:
        detect_format(tmp_path / "nope.jsonl.zst")
    assert "nope.jsonl.zst" in str(err.value)


def _lines(path: Path) -> list[bytes]:
    return [line for _, line in SourceReader(path).lines()]


def test_truncated_zstd_is_an_error_with_the_byte_offset(tmp_path: Path) -> None:
    data = b"".join(json.dumps({"text": f"document {i} " * 50}).encode() + b"\n" for i in range(2000))
    frame = zstandard.ZstdCompressor(level=3).compress(data)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(frame[: len(frame) // 2])
    with pytest.raises(SourceError, match=rf"truncated zstd stream: the file ends at byte {len(frame) // 2:,}"):
        _lines(path)


def test_an_empty_zst_file_is_an_error_not_an_empty_source(tmp_path: Path) -> None:
    path = tmp_path / "00.jsonl.zst"
    path.write_bytes(b"")  # a failed download: zero bytes, where a zstd frame must be
    with pytest.raises(SourceError, match=r"00.jsonl.zst: empty file \(0 bytes\)"):
        detect_format(path)
    (tmp_path / "empty.jsonl").write_bytes(b"")  # plain JSON lines with no line: a valid, empty source
    assert detect_format(tmp_path / "empty.jsonl") == "jsonl"


def test_corrupt_zstd_is_an_error_naming_the_file(tmp_path: Path) -> None:
    data = b"".join(json.dumps({"text": f"document {i}"}).encode() + b"\n" for i in range(5000))
    frame = bytearray(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data))
    frame[len(frame) // 2] ^= 0xFF
    path = tmp_path / "flipped.jsonl.zst"
    path.write_bytes(bytes(frame))
    with pytest.raises(SourceError, match="corrupt zstd data") as err:
        _lines(path)
    assert str(path) in str(err.value)


def test_concatenated_frames_and_skippable_frames_are_all_read(tmp_path: Path) -> None:
    cctx = zstandard.ZstdCompressor()
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
    path = tmp_path / "multi.jsonl.zst"
    path.write_bytes(cctx.compress(b'{"text": "a"}\n') + skippable + cctx.compress(b'{"text": "b"}\n'))
    assert _lines(path) == [b'{"text": "a"}', b'{"text": "b"}']


def test_sha256_and_bytes_read_describe_the_whole_file(sample_path: Path) -> None:
    import hashlib

    reader = SourceReader(sample_path)
    count = sum(1 for _ in reader.lines())
    assert count == 5993
    assert reader.bytes_read == sample_path.stat().st_size
    assert reader.sha256 == hashlib.sha256(sample_path.read_bytes()).hexdigest()


def test_lines_split_only_on_newline_like_the_reference_decoder(sample_path: Path) -> None:
    """Line 3180 holds raw U+2028/U+2029/U+0085; line 4791 ends in \\r\\n: both stay one line."""
    ours = _lines(sample_path)
    assert ours == read_source_lines(sample_path)


@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=20), st.integers(1, 7))
def test_iter_lines_is_independent_of_chunk_boundaries(lines: list[bytes], chunk: int) -> None:
    data = b"\n".join(lines)
    chunks = (data[i : i + chunk] for i in range(0, len(data), chunk))
    expected = data.split(b"\n") if data else []
    if expected and expected[-1] == b"":
        expected.pop()
    assert [line for _, line in iter_lines(chunks, Path("x"))] == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"text": "a"', "not_json"),
        (b"", "blank_line"),
        (b"  \r", "blank_line"),
        (b'["text"]', "not_object"),
        (b'{"meta": {}}', "missing_text"),
        (b'{"text": 5}', "text_not_string"),
        (b'{"text": null}', "text_not_string"),
        (b'{"text": "a", "meta": "Github"}', "meta_not_object"),
        (b'{"text": "caf\xe9"}', "invalid_utf8"),
        (b'{"text": "a", "meta": {"x": NaN}}', "not_json"),
        (b'{"text": "a", "meta": {"x": 1e999}}', "not_json"),
    ],
)
def test_bad_lines_are_classified(line: bytes, reason: str) -> None:
    for form in (line, memoryview(b"\n" + line + b"\n")[1:-1]):  # iter_lines hands out slices of a chunk
        with pytest.raises(LineError) as err:
            parse_line(form)
        assert err.value.reason == reason


def test_lines_are_views_of_their_chunk_except_those_that_span_chunks() -> None:
    chunks = [b'{"text": "a"}\n{"text": "b', b'c"}\n{"text": "d"}\n']
    lines = list(iter_lines(iter(chunks), Path("x")))
    assert [(n, bytes(line)) for n, line in lines] == [
        (1, b'{"text": "a"}'),
        (2, b'{"text": "bc"}'),
        (3, b'{"text": "d"}'),
    ]
    assert [type(line) for _, line in lines] == [memoryview, bytes, memoryview]
    assert [parse_line(line)[0] for _, line in lines] == ["a", "bc", "d"]


def test_lone_surrogates_fall_back_to_the_stdlib_and_are_kept() -> None:
    line = b'{"text": "a\\ud83db \\ude00\\ud83d", "meta": {"pile_set_name": "X"}}'
    for form in (line, memoryview(line)):
        text, rest = parse_line(form)
        assert text == "a\ud83db \ude00\ud83d"
        assert rest == {"meta": {"pile_set_name": "X"}}


def test_integers_beyond_64_bits_in_meta_stay_exact() -> None:
    expected = {"meta": {"id": -9223372036854775809, "n": [123456789012345678901234567890]}, "k": [{"z": 2e19}]}
    line = b'{"text": "a", ' + json.dumps(expected)[1:].encode()
    for form in (line, memoryview(line)):
        _, rest = parse_line(form)
        assert rest == expected
    assert type(parse_line(line)[1]["k"][0]["z"]) is float  # a float stays a float
