from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from pilestore.document import (
    NO_SUBSET,
    Document,
    checksum,
    decode_text,
    dump_json,
    encode_text,
    is_plain,
    load_json,
    subset_of,
)

any_text = st.text(st.characters(exclude_categories=()))  # includes lone surrogates (category Cs)


@given(any_text)
def test_text_survives_encode_decode_including_lone_surrogates(text: str) -> None:
    assert decode_text(encode_text(text)) == text


@given(
    any_text,
    st.dictionaries(st.text(), st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), any_text)),
)
def test_dump_json_round_trips_what_the_stdlib_reads(text: str, meta: dict) -> None:
    record = {"text": text, "meta": meta}
    dumped = dump_json(record)
    assert json.loads(dumped) == record
    assert load_json(dumped) == record


def test_dump_json_keeps_integers_beyond_64_bits() -> None:
    assert json.loads(dump_json({"n": 2**70})) == {"n": 2**70}


def test_subset_of_falls_back_for_missing_or_odd_names() -> None:
    assert subset_of({"meta": {"pile_set_name": "Github"}}) == "Github"
    assert subset_of({}) == NO_SUBSET
    assert subset_of({"meta": {"pile_set_name": 3}}) == NO_SUBSET
    assert subset_of({"meta": {"pile_set_name": "\ud83d"}}) == NO_SUBSET


def test_is_plain_only_for_exactly_the_subset_meta() -> None:
    assert is_plain({"meta": {"pile_set_name": "Github"}}, "Github")
    assert not is_plain({"meta": {"pile_set_name": "Github", "lang": "ko"}}, "Github")
    assert not is_plain({"meta": {"pile_set_name": "Github"}, "id": 1}, "Github")
    assert not is_plain({}, NO_SUBSET)


def test_checksum_is_a_signed_int64_and_sensitive_to_one_byte() -> None:
    values = {checksum(bytes([b]) * 100) for b in range(256)}
    assert len(values) == 256
    assert all(-(2**63) <= v < 2**63 for v in values)


def test_to_record_puts_back_meta_and_extra_keys() -> None:
    document = Document(0, "t", None, NO_SUBSET, {"id": 7})
    assert document.to_record() == {"text": "t", "id": 7}
