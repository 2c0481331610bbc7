"""Random byte flips in a tokenized view (token, offset and document files, block checksums, sample indexes,
their JSON files, the tokenizer copy): opening or reading samples fails with a clear PilestoreError, or every
sample reads back exactly as before and `verify` reports the change. Never another exception, never other
tokens returned silently."""

from __future__ import annotations

import random
from pathlib import Path

import xxhash

import pilestore
from pilestore.errors import PilestoreError
from pilestore.indexes import build_indexes
from pilestore.ingest import ingest
from pilestore.samples import SampleIndex
from pilestore.tokens import TokenView, tokenize
from pilestore.verify import verify
from tests.conftest import read_source_lines

TRIALS = 250
SHAPE = (128, 32, "bestfit")


def _digest(index: SampleIndex, batched: bool) -> list[int]:
    """One hash per sample of everything a reader gets (ids, labels, positions, lengths, spans, bytes), or
    with `batched`, one per batch of 13 samples read together (the path of PileDataset.__getitems__)."""
    out = []
    if batched:
        for begin in range(0, len(index), 13):
            h = xxhash.xxh3_64()
            for key, array in index.gather(range(begin, min(begin + 13, len(index)))).items():
                h.update(key.encode() + array.tobytes())
            out.append(h.intdigest())
        return out
    for i in range(len(index)):
        s = index[i]
        h = xxhash.xxh3_64()
        for array in (s.input_ids, s.labels, s.position_ids, s.doc_lengths):
            h.update(array.tobytes())
        h.update(repr((s.spans, s.n_bytes)).encode())
        out.append(h.intdigest())
    return out


def _read_all(folder: Path, batched: bool = False) -> dict[str, list[int]]:
    view = TokenView(folder)
    names = sorted(p.name.removesuffix(".json") for p in (folder / "samples").glob("*.json"))
    indexes = {name: SampleIndex(view, name) for name in names}  # open everything first, then read
    return {name: _digest(index, batched) for name, index in indexes.items()}


def test_flipped_bytes_in_a_tokenized_view_give_clear_errors_or_unchanged_samples(
    sample_path: Path, model: Path, tmp_path: Path
) -> None:
    lines = read_source_lines(sample_path)
    shards = []
    for name, chunk in (("a.jsonl", lines[:90]), ("b.jsonl", lines[280:330])):  # quirk line 296 included
        (tmp_path / name).write_bytes(b"\n".join(chunk) + b"\n")
        shards.append(tmp_path / name)
    store_dir = tmp_path / "s.store"
    ingest(shards, store_dir)
    store = pilestore.open(store_dir)
    folder = Path(tokenize(store, model)["view"])
    build_indexes(TokenView(folder), store, *SHAPE)
    expected = {batched: _read_all(folder, batched) for batched in (False, True)}
    assert len(expected[False]) == 2 and all(len(v) > 100 for v in expected[False].values())
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_size)
    kinds = {p.name.split(".", 1)[1] for p in files}
    assert kinds >= {"tokens", "lens", "arrow", "sums", "done", "json", "model", "rows.arrow", "samples.arrow"}
    rng = random.Random(99)
    outcomes: dict[str, dict[str, int]] = {}
    for trial in range(TRIALS):
        target = rng.choice(files)
        pristine = target.read_bytes()
        data = bytearray(pristine)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        kind = target.name.split(".", 1)[1]
        try:
            for batched in (False, True):  # each read path on its own: an error, or exactly the samples
                tally = outcomes.setdefault(f"{kind}{' batched' if batched else ''}", {"error": 0, "unchanged": 0})
                try:
                    got = _read_all(folder, batched)
                except PilestoreError:
                    tally["error"] += 1
                else:
                    assert got == expected[batched], f"trial {trial}: a flip in {target.name} changed samples"
                    assert not verify(pilestore.open(store_dir)).ok, f"trial {trial}: verify missed {target.name}"
                    tally["unchanged"] += 1
        finally:
            target.write_bytes(pristine)
    # the read path's own checks fired: damaged token blocks and sample records were refused, not returned
    for kind in ("tokens", "sums", "rows.arrow", "json"):
        for path in ("", " batched"):
            assert outcomes.get(kind + path, {}).get("error"), (kind + path, outcomes)
    print(outcomes)
    assert _read_all(folder) == expected[False] and _read_all(folder, True) == expected[True]
    assert verify(pilestore.open(store_dir)).ok
