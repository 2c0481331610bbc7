"""Stream records out of Pile shards (`.jsonl.zst` or plain `.jsonl`, told apart by magic bytes).

    file ──read 1 MiB──▶ zstd frames ──▶ bytes ──split on b"\\n"──▶ (line_no, line) ──parse──▶ Record

Only `\\n` ends a line: raw U+2028/U+2029/U+0085 inside JSON strings are text, not line breaks.
A truncated or corrupt zstd stream raises SourceError naming the file and the compressed byte offset;
python-zstandard's stream reader would silently stop at a truncated frame, so frames are fed by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import zstandard

from .document import may_hold_big_int
from .errors import LineError, SourceError
from .prefetch import prefetch

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_SIZE = 1 << 20  # compressed bytes per read: progress granularity and memory per chunk
MAX_LINE_BYTES = 1 << 30  # a longer "line" is not a document but a file without newlines

Format = Literal["zstd", "jsonl"]
ByteCallback = Callable[[int], None]

_OTHER_COMPRESSION = {
    b"\x1f\x8b": ("gzip", "gzip -dc FILE | zstd -o FILE.zst"),
    b"BZh": ("bzip2", "bzip2 -dc FILE | zstd -o FILE.zst"),
    b"\xfd7zXZ": ("xz", "xz -dc FILE | zstd -o FILE.zst"),
    b"PK\x03\x04": ("zip", "unzip -p FILE | zstd -o FILE.zst"),
}


@dataclass(frozen=True, slots=True)
class Record:
    """One good line: its text, the rest of its JSON object (usually just `meta`), and where it was."""

    line_no: int
    text: str
    rest: dict[str, Any]


def _is_skippable_frame(head: bytes) -> bool:
    return len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and 0x50 <= head[0] <= 0x5F


def detect_format(path: Path) -> Format:
    """'zstd' or 'jsonl' from the first bytes of the file, whatever its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a directory, expected a .jsonl.zst or .jsonl file") from None
    except OSError as err:
        raise SourceError(f"{path}: cannot read: {err.strerror}") from err
    if head.startswith(ZSTD_MAGIC) or _is_skippable_frame(head):
        return "zstd"
    for magic, (name, fix) in _OTHER_COMPRESSION.items():
        if head.startswith(magic):
            raise SourceError(
                f"{path}: {name}-compressed, but pilestore reads zstd or plain JSON lines; convert it with `{fix}`"
            )
    if not head and path.name.endswith((".zst", ".zstd")):
        raise SourceError(
            f"{path}: empty file (0 bytes), but a .zst file holds at least one zstd frame; the download or copy "
            "failed: fetch the file again"
        )
    first = head.lstrip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if not head or first.startswith(b"{"):
        return "jsonl"
    raise SourceError(
        f"{path}: neither zstd (magic bytes 28 b5 2f fd) nor JSON lines (first byte {first[:1]!r} at offset "
        f"{len(head) - len(first)}, expected '{{'); pass a Pile shard such as 00.jsonl.zst"
    )


def _raw_chunks(fh: Any, digest: Any, counter: list[int]) -> Iterator[bytes]:
    """The file's bytes in chunks; counter[0] is the number of bytes read so far."""
    while chunk := fh.read(READ_SIZE):
        digest.update(chunk)
        counter[0] += len(chunk)
        yield chunk


def _zstd_chunks(raw: Iterator[bytes], path: Path) -> Iterator[bytes]:
    """Decompress every frame of a zstd stream; raise on corruption or a frame the file cuts short."""
    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    in_frame = False
    offset = 0  # compressed bytes consumed before the current chunk
    for chunk in raw:
        data = chunk
        while data:
            try:
                out = dobj.decompress(data)
            except zstandard.ZstdError as err:
                raise SourceError(
                    f"{path}: corrupt zstd data in compressed bytes {offset:,}..{offset + len(chunk):,}: {err}. "
                    "Re-download or re-create the file (`zstd -t FILE` checks it)."
                ) from err
            in_frame = True
            if out:
                yield out
            if dobj.eof:
                data = dobj.unused_data
                dobj = dctx.decompressobj()
                in_frame = False
            else:
                data = b""
        offset += len(chunk)
    if in_frame:
        raise SourceError(
            f"{path}: truncated zstd stream: the file ends at byte {offset:,} inside a frame. "
            "The download or copy was cut short; fetch the file again."
        )


def iter_lines(chunks: Iterator[bytes], path: Path) -> Iterator[tuple[int, bytes | memoryview]]:
    """(1-based line number, line without its b"\\n") for every line, the last one even without a newline.

    Lines inside a chunk are memoryview slices of it, not copies: splitting into new bytes objects cost
    a copy and an allocation of every line, ~14% of the parsing thread's time (the GIL-bound half of ingest).
    A line that spans chunks is joined into bytes.
    """
    pending: list[bytes | memoryview] = []
    pending_size = 0
    line_no = 0
    for chunk in chunks:
        view = memoryview(chunk)
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            line_no += 1
            if pending:
                pending.append(view[start:end])
                yield line_no, b"".join(pending)
                pending.clear()
                pending_size = 0
            else:
                yield line_no, view[start:end]
            start = end + 1
        if start < len(chunk):
            pending.append(view[start:])
            pending_size += len(chunk) - start
            if pending_size > MAX_LINE_BYTES:
                raise SourceError(
                    f"{path}:{line_no + 1}: line longer than {MAX_LINE_BYTES:,} bytes without a "
                    "newline; this is not a JSON-lines file"
                )
    if pending:
        yield line_no + 1, b"".join(pending)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):  # stored as inf it would come back as null: refuse rather than alter the document
        raise ValueError(f"number {literal} does not fit a 64-bit float")
    return value


def _parse_slow(line: bytes | memoryview) -> Any:
    """What orjson rejected: lone surrogate escapes are fine (stdlib json), anything else is a bad line."""
    line = bytes(line)
    if not line.strip():
        raise LineError("blank_line", "blank line")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LineError("invalid_utf8", f"invalid UTF-8 at byte {err.start} of the line") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as err:
        raise LineError("not_json", f"not JSON: {err.msg} at column {err.colno}") from None
    except (ValueError, RecursionError) as err:
        raise LineError("not_json", f"not JSON: {err}") from None


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def parse_line(line: bytes | memoryview) -> tuple[str, dict[str, Any]]:
    """(text, rest of the object) of one line, or LineError with a reason and what is wrong."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        obj = _parse_slow(line)
    else:
        if may_hold_big_int(obj):  # the text, a str, is skipped
            obj = _parse_slow(line)
    if not isinstance(obj, dict):
        raise LineError("not_object", f"expected a JSON object, found a JSON {_json_type(obj)}")
    if "text" not in obj:
        keys = ", ".join(sorted(obj)[:6]) or "none"
        raise LineError("missing_text", f"no 'text' field (keys: {keys})")
    text = obj.pop("text")
    if not isinstance(text, str):
        raise LineError("text_not_string", f"'text' is a JSON {_json_type(text)}, expected a string")
    if "meta" in obj and not isinstance(obj["meta"], dict):
        raise LineError("meta_not_object", f"'meta' is a JSON {_json_type(obj['meta'])}, expected an object")
    return text, obj


class SourceReader:
    """Reads one source file; after iteration, `sha256` and `bytes_read` describe the whole file."""

    def __init__(self, path: Path, on_bytes: ByteCallback = lambda n: None) -> None:
        self.path = path
        self.format: Format = detect_format(path)
        self.size = os.path.getsize(path)
        self._on_bytes = on_bytes
        self._digest = hashlib.sha256()
        self.bytes_read = 0

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def _count(self, n: int) -> None:
        self.bytes_read += n
        self._on_bytes(n)

    def _decoded(self, fh: Any) -> Iterator[tuple[bytes, int]]:
        """(decompressed chunk, compressed bytes read so far); runs in the prefetch thread."""
        counter = [0]
        raw = _raw_chunks(fh, self._digest, counter)
        for chunk in _zstd_chunks(raw, self.path) if self.format == "zstd" else raw:
            yield chunk, counter[0]

    def lines(self) -> Iterator[tuple[int, bytes | memoryview]]:
        """Every line of the file, decompressed a few MB ahead by a background thread."""
        try:
            with open(self.path, "rb") as fh:
                decoded = prefetch(self._decoded(fh))
                try:
                    yield from iter_lines(self._counted(decoded), self.path)
                finally:
                    decoded.close()  # stops the thread before the file closes
        except OSError as err:
            raise SourceError(f"{self.path}: read failed after {self.bytes_read:,} bytes: {err.strerror}") from err

    def _counted(self, decoded: Iterator[tuple[bytes, int]]) -> Iterator[bytes]:
        for chunk, read in decoded:
            self._count(read - self.bytes_read)  # progress callbacks run in the consumer's thread
            yield chunk

    def records(self, on_bad_line: Callable[[int, LineError], None]) -> Iterator[Record]:
        """Good lines as Records; each bad line goes to on_bad_line (which may raise to stop)."""
        for line_no, line in self.lines():
            try:
                text, rest = parse_line(line)
            except LineError as err:
                on_bad_line(line_no, err)
                continue
            yield Record(line_no, text, rest)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def file_matches(path: Path, recorded: Mapping[str, Any]) -> bool:
    """Whether the file has the size and sha256 recorded for it ({"size": ..., "sha256": ...}); the size first."""
    return path.stat().st_size == recorded["size"] and file_sha256(path) == recorded["sha256"]
