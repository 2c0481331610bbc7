"""Document: one line of a Pile shard, and its JSON form.

A line is a JSON object with a string `text`; everything else on the line (usually
`"meta": {"pile_set_name": ...}`, but any keys) is kept exactly. Text is carried as UTF-8 bytes
encoded with `surrogatepass`, so the lone UTF-16 surrogates real Pile lines hold (`"\\ud83d"`)
survive the round trip: `decode_text(encode_text(s)) == s` for every Python string.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

NO_SUBSET = "(none)"
"""Subset of documents whose meta has no string `pile_set_name`."""


@dataclass(slots=True)  # not frozen: a frozen init costs 0.5 us of a ~7 us random read
class Document:
    """A document read from a store: its global index, text, meta (None if the line had none) and subset."""

    idx: int
    text: str
    meta: dict[str, Any] | None
    subset: str
    extra: dict[str, Any] | None = None
    """Top-level keys of the source line other than `text` and `meta`, if there were any."""

    def to_record(self) -> dict[str, Any]:
        """The JSON object of the source line: `text`, then `meta` (if present), then any other keys."""
        record: dict[str, Any] = {"text": self.text}
        if self.meta is not None:
            record["meta"] = self.meta
        if self.extra:
            record.update(self.extra)
        return record


def encode_text(text: str) -> bytes:
    """UTF-8 bytes of `text`; lone surrogates become their 3-byte forms instead of failing."""
    return text.encode("utf-8", "surrogatepass")


def decode_text(data: bytes) -> str:
    """Inverse of encode_text."""
    return data.decode("utf-8", "surrogatepass")


def checksum(data: bytes) -> int:
    """xxh3_64 of a document's UTF-8 bytes as a signed int64 (what SQLite and the Arrow index store)."""
    value = xxhash.xxh3_64_intdigest(data)
    return value - (1 << 64) if value >= (1 << 63) else value


@functools.lru_cache(maxsize=1024)
def _subset_tag(subset: str) -> bytes:
    """The subset's part of a row checksum (a store has a few dozen subsets; encoded once each)."""
    return b"\x00" + subset.encode("utf-8", "surrogatepass") + b"\x00"


def row_checksum(data: bytes, subset: str, rest: str | None) -> int:
    """A partition row's checksum: xxh3_64 of the text, then its subset name and stored meta JSON, as a signed
    int64. A damaged row cannot return another subset or another document's meta without an error."""
    hasher = xxhash.xxh3_64(data)
    hasher.update(_subset_tag(subset))
    if rest is not None:
        hasher.update(rest.encode("utf-8", "surrogatepass"))
    value = hasher.intdigest()
    return value - (1 << 64) if value >= (1 << 63) else value


def subset_of(rest: dict[str, Any]) -> str:
    """The `meta.pile_set_name` of a record without its text, or NO_SUBSET."""
    meta = rest.get("meta")
    name = meta.get("pile_set_name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name or name == NO_SUBSET:
        return NO_SUBSET
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in the name: keep it in meta, group it as unknown
        return NO_SUBSET
    return name


def is_plain(rest: dict[str, Any], subset: str) -> bool:
    """True when the record, text aside, is exactly {"meta": {"pile_set_name": subset}} (stored as NULL)."""
    if len(rest) != 1:
        return False
    meta = rest.get("meta")
    return type(meta) is dict and len(meta) == 1 and meta.get("pile_set_name") == subset and subset != NO_SUBSET


def dump_json(obj: Any) -> bytes:
    """Compact JSON; falls back to ASCII escapes for what orjson refuses (lone surrogates, ints over 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError subclasses TypeError
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def may_hold_big_int(value: Any) -> bool:
    """True if orjson may have turned an integer beyond 64 bits into a float somewhere in `value`.

    orjson reads such integers as floats without a word; the stdlib keeps them exact, so callers
    re-parse with it when this says so (a float this large written as a float re-parses the same).
    """
    kind = type(value)
    if kind is float:
        return value.is_integer() and abs(value) >= 2**63
    if kind is dict:
        items: Any = value.values()
    elif kind is list:
        items = value
    else:
        return False
    for item in items:  # a loop, not any(generator): it runs for every line ingested
        if type(item) is not str and may_hold_big_int(item):
            return True
    return False


def load_json(data: bytes | str) -> Any:
    """Parse JSON exactly: orjson, or the stdlib for what orjson refuses or would round (lone surrogates,
    integers beyond 64 bits)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
    return json.loads(data) if may_hold_big_int(value) else value
