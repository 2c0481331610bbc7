"""Random byte flips in a store's files (partitions, index files, manifest): open and reads either fail with a
clear PilestoreError or return every document exactly as it was, never another exception or a wrong document."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pilestore
from pilestore.errors import PilestoreError
from pilestore.verify import verify

TRIALS = 600


def test_flipped_bytes_give_clear_errors_or_unchanged_documents(small_store: Path, tmp_path: Path) -> None:
    reference = pilestore.open(small_store)
    expected = [reference[i].to_record() for i in range(len(reference))]
    files = sorted(p.relative_to(small_store) for p in small_store.rglob("*") if p.is_file() and p.stat().st_size)
    files = [f for f in files if f.parts[0] not in ("tokens", ".staging") and f.name != ".lock"]
    assert {f.suffix for f in files} >= {".sqlite", ".arrow", ".json"}
    rng = random.Random(1234)
    outcomes = {"open error": 0, "read error": 0, "unchanged": 0}
    for trial in range(TRIALS):
        work = tmp_path / f"t{trial % 2}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(small_store, work)
        target = work / rng.choice(files)
        data = bytearray(target.read_bytes())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        try:
            store = pilestore.open(work)
        except PilestoreError:
            outcomes["open error"] += 1
            continue
        try:
            got = [store[i].to_record() for i in range(len(store))]
        except PilestoreError:
            outcomes["read error"] += 1
            continue
        assert got == expected, f"trial {trial}: {target.name} altered a document without an error"
        outcomes["unchanged"] += 1
        if outcomes["unchanged"] <= 5:  # a flip that reads cleanly (free pages, unused bytes) is still found
            assert not verify(store).ok, f"trial {trial}: verify missed a change to {target.name}"
    assert outcomes["open error"] and outcomes["read error"], outcomes
