"""Faults with real processes: a full disk (RLIMIT_FSIZE) during ingest and tokenize, and 32 readers of a store
while another process adds a partition to it."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pilestore
from pilestore.ingest import ingest

from .conftest import read_source_lines


def limited(max_bytes: int):  # noqa: ANN201
    """preexec_fn: files may not grow past max_bytes; writes beyond fail with EFBIG instead of killing us."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def cli(*args: str, max_bytes: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pilestore", *args],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limited(max_bytes) if max_bytes else None,
    )


def snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_a_full_disk_fails_ingest_cleanly_and_leaves_the_store_as_it_was(sample_path: Path, tmp_path: Path) -> None:
    lines = read_source_lines(sample_path)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_bytes(b"\n".join(lines[:300]) + b"\n")
    second.write_bytes(b"\n".join(lines[300:]) + b"\n")  # ~35 MB of text: its partition cannot fit in 2 MB
    store = tmp_path / "s.store"
    ingest([first], store)
    before = {k: v for k, v in snapshot(store).items() if not k.startswith(".staging")}
    done = cli("ingest", str(second), "--store", str(store), max_bytes=2_000_000)
    assert done.returncode == 1, done.stdout + done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert "b.jsonl" in message or "File too large" in message or "full" in message.lower(), message
    assert "Traceback" not in done.stderr
    after = {k: v for k, v in snapshot(store).items() if not k.startswith(".staging")}
    assert after == before  # the manifest, partitions and index files are untouched
    assert len(pilestore.open(store)) == 300
    again = cli("ingest", str(second), "--store", str(store))
    assert again.returncode == 0, again.stderr
    assert len(pilestore.open(store)) == len(lines)


def test_a_full_disk_fails_tokenize_without_a_view_that_looks_complete(
    small_store: Path, model: Path, tmp_path: Path
) -> None:
    import shutil

    store = tmp_path / "copy.store"
    shutil.copytree(small_store, store, ignore=shutil.ignore_patterns("tokens"))
    done = cli("tokenize", "--store", str(store), "--tokenizer", str(model), "--seq-len", "64", "--context", "16",
               max_bytes=300_000)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not list((store / "tokens").glob("*/view.json"))  # no view is complete
    again = cli("tokenize", "--store", str(store), "--tokenizer", str(model), "--seq-len", "64", "--context", "16")
    assert again.returncode == 0, again.stderr
    assert list((store / "tokens").glob("*/view.json"))


READER = """
import json, os, random, sys
import pilestore
from pilestore.samples import SampleIndex, find_index
from pilestore.tokens import ViewBehindError, find_view
store_dir, stop, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
seen, rounds, last = [], 0, False
while not last:   # rounds go on until one that starts after the writer is done
    last = rounds >= 4 and os.path.exists(stop)
    rounds += 1
    store = pilestore.open(store_dir)   # each open sees one manifest, whole
    n = len(store)
    for _ in range(10):
        i = rng.randrange(n)
        doc = store[i]
        assert doc.idx == i and isinstance(doc.text, str)
    try:   # between the ingest and the end of tokenize, the view or its index is behind the store: refused
        view = find_view(store, None)
        index = SampleIndex(view, find_index(view, "train"))
    except ViewBehindError:
        seen.append([n, "behind"])
        continue
    for _ in range(10):
        k = rng.randrange(len(index))
        sample = index[k]
        at = 0
        for span in sample.spans:   # the sample's tokens are its documents' tokens, found via the view's tables
            p, local = index._locate(span["doc"])
            part = index.view.partition(p)
            first = int(part.start[local]) + span["start"]
            want = part.tokens[first : first + span["context"] + span["target"]].tolist()
            got = sample.input_ids[at + span["eod"] : at + span["eod"] + len(want)].tolist()
            assert got == want[: len(got)], (k, span)
            at += span["eod"] + span["context"] + span["target"]
    seen.append([n, len(index)])
print(json.dumps(seen))
"""


def test_32_readers_stay_consistent_while_a_partition_is_added_and_tokenized(
    sample_path: Path, model: Path, tmp_path: Path
) -> None:
    lines = read_source_lines(sample_path)[:1600]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_bytes(b"\n".join(lines[:800]) + b"\n")
    second.write_bytes(b"\n".join(lines[800:]) + b"\n")
    store = tmp_path / "s.store"
    ingest([first], store)
    shape = ("--seq-len", "64", "--context", "16")
    before = cli("tokenize", "--store", str(store), "--tokenizer", str(model), *shape)
    assert before.returncode == 0, before.stderr
    samples_before = json.loads((next(store.glob("tokens/*/samples/train-*.json"))).read_text())["samples"]
    stop = tmp_path / "stop"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    readers = [
        subprocess.Popen([sys.executable, "-c", READER, str(store), str(stop), str(seed)], **pipes)
        for seed in range(32)
    ]
    writer = cli("ingest", str(second), "--store", str(store))
    assert writer.returncode == 0, writer.stderr
    writer = cli("tokenize", "--store", str(store), "--tokenizer", str(model), *shape)
    assert writer.returncode == 0, writer.stderr
    samples_after = json.loads((next(store.glob("tokens/*/samples/train-*.json"))).read_text())["samples"]
    stop.touch()
    seen = set()
    for proc in readers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        seen |= {tuple(x) for x in json.loads(out)}
    # each reader saw the store and the index before or after each commit, never in between; in between the
    # ingest and the end of tokenize, the view (or its index) was refused as behind, never read part way
    assert {n for n, _ in seen} <= {800, len(lines)}
    assert {k for _, k in seen} <= {samples_before, samples_after, "behind"}
    assert (len(lines), samples_after) in seen, seen  # every reader's last round started after the writer was done
    assert not any(p.name.endswith((".lock", "-wal", "-shm", "-journal")) for p in (store / "partitions").iterdir())
    assert os.path.exists(store / "manifest.json") and len(pilestore.open(store)) == len(lines)


def test_a_full_disk_fails_an_index_build_and_leaves_the_view_as_it_was(
    small_store: Path, model: Path, tmp_path: Path
) -> None:
    """The index files are laid out at their full size first: a disk too small fails there or while they are
    filled, with one line naming the file; no temporary file is left and the view's indexes are unchanged."""
    import shutil

    store = tmp_path / "copy.store"
    shutil.copytree(small_store, store, ignore=shutil.ignore_patterns("tokens"))
    first = cli("tokenize", "--store", str(store), "--tokenizer", str(model), "--seq-len", "64", "--context", "16")
    assert first.returncode == 0, first.stderr
    samples = next((store / "tokens").glob("*/samples"))
    before = {p.name: p.read_bytes() for p in samples.iterdir()}
    largest = max(len(data) for data in before.values())
    done = cli("index", "--store", str(store), "--seq-len", "16", "--context", "4", max_bytes=largest)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and re.search(
        r"samples/eval-L16-C4\.\w+\.tmp: File too large", done.stderr
    ), done.stderr
    assert {p.name: p.read_bytes() for p in samples.iterdir()} == before  # nothing added, nothing left behind
    again = cli("index", "--store", str(store), "--seq-len", "16", "--context", "4")
    assert again.returncode == 0, again.stderr
