"""kill -9 at 12 random points of an ingest and of a tokenize, and every command stopped before each of its file
steps (tests/killpoints.py: kill -9, full disk, Ctrl-C): after each stop nothing looks complete that is not, and
the re-run finishes with exactly the documents / files of an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pilestore
from pilestore.document import dump_json
from pilestore.errors import IncompleteStoreError, StoreNotFoundError
from pilestore.tokens import TokenView

from .conftest import read_source_lines

KILLS = 6  # per chain; two chains per command (tests/killpoints.py stops at every file step besides)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pilestore", *args, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def finish(*args: str) -> float:
    began = time.monotonic()
    proc = start(*args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    return time.monotonic() - began


def kill_after(seconds: float, *args: str) -> None:
    proc = start(*args)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def documents_digest(store_dir: Path) -> str:
    h = hashlib.sha256()
    for doc in pilestore.open(store_dir):
        h.update(dump_json({"idx": doc.idx, **doc.to_record()}) + b"\n")
    return h.hexdigest()


def test_ingest_killed_at_random_points_reruns_to_the_same_documents(sample_path: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.store"
    full = finish("ingest", str(sample_path), "--store", str(reference))
    expected, count = documents_digest(reference), len(pilestore.open(reference))
    rng = random.Random(7)
    for chain in range(2):
        store = tmp_path / f"chain{chain}.store"
        for _ in range(KILLS):
            kill_after(rng.uniform(0.0, full), "ingest", str(sample_path), "--store", str(store))
            try:
                assert len(pilestore.open(store)) == count  # committed before the kill: complete
            except (StoreNotFoundError, IncompleteStoreError):
                pass  # not committed: refused, never half-read
        finish("ingest", str(sample_path), "--store", str(store))
        assert documents_digest(store) == expected
        assert not list((store / ".staging").iterdir())


def token_files(store: Path) -> dict[str, bytes]:
    files = sorted(p for p in (store / "tokens").rglob("*") if p.is_file() and p.suffix != ".json")
    return {str(p.relative_to(store)): p.read_bytes() for p in files}


def test_tokenize_killed_at_random_points_reruns_to_the_same_token_files(
    small_store: Path, model: Path, tmp_path: Path
) -> None:
    def fresh(name: str) -> Path:
        path = tmp_path / name
        shutil.copytree(small_store, path, ignore=shutil.ignore_patterns("tokens"))
        return path

    args = ["--tokenizer", str(model), "--seq-len", "64", "--context", "16", "--workers", "1"]
    reference = fresh("reference.store")
    full = finish("tokenize", "--store", str(reference), *args)
    expected = token_files(reference)
    assert any(name.endswith(".tokens") for name in expected) and any("samples" in name for name in expected)
    rng = random.Random(11)
    for chain in range(2):
        store = fresh(f"chain{chain}.store")
        for _ in range(KILLS):
            kill_after(rng.uniform(0.0, full), "tokenize", "--store", str(store), *args)
            for found in (store / "tokens").glob("*/view.json"):  # a view that says it is complete, is
                view = TokenView(found.parent)
                for p in range(view.num_partitions):
                    part = view.partition(p)
                    assert len(part.tokens) == len(part.lengths) == int(part.n_tokens.sum()), found
        finish("tokenize", "--store", str(store), *args)
        assert token_files(store) == expected


def test_ingest_killed_in_its_commit_reruns_to_the_same_documents(
    sample_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between moving a staged partition into the store and writing the manifest: the staging folder keeps
    its result but not its partition file. (The random-kill test above hit this window once: the rerun failed
    with 'partition.sqlite: No such file or directory' on every later run.)"""
    import os

    from pilestore import ingest as ingest_module

    reference = tmp_path / "reference.store"
    ingest_module.ingest([sample_path], reference)
    store = tmp_path / "killed.store"
    real_replace = os.replace

    def killed_after_the_partition(src: str | Path, dst: str | Path) -> None:
        if Path(src).name == ingest_module.INDEX_FILE:
            raise KeyboardInterrupt  # the partition file has moved, the index and the manifest have not
        real_replace(src, dst)

    monkeypatch.setattr(ingest_module.os, "replace", killed_after_the_partition)
    with pytest.raises(KeyboardInterrupt):
        ingest_module.ingest([sample_path], store)
    monkeypatch.setattr(ingest_module.os, "replace", real_replace)
    with pytest.raises((StoreNotFoundError, IncompleteStoreError)):
        pilestore.open(store)  # nothing committed: refused, never half-read
    ingest_module.ingest([sample_path], store)
    assert documents_digest(store) == documents_digest(reference)
    assert not list((store / ".staging").iterdir())


KILLPOINTS = Path(__file__).with_name("killpoints.py")
STEPS = {  # a kill before an fsync leaves what a kill before the rename does; a full disk shows at fsync
    "kill": "replace,rename,unlink,copyfile",
    "fail": "replace,fsync,copyfile",
    "interrupt": "replace,rename,unlink,fsync,copyfile",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, sample_path: Path, model: Path) -> dict[str, Path]:
    """Small sources (documents under 20 KB) and stores made of them: a point of the sweeps costs ~0.5 s."""
    from pilestore.indexes import build_indexes
    from pilestore.ingest import ingest
    from pilestore.tokens import tokenize

    folder = tmp_path_factory.mktemp("tiny")
    lines = [line for line in read_source_lines(sample_path)[:600] if len(line) < 20_000]
    paths = {}
    for name, chunk in (("a", lines[:40]), ("b", lines[40:70]), ("c", lines[70:100])):
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_bytes(b"\n".join(chunk) + b"\n")
    ingest([paths["a"], paths["b"]], folder / "ab.store")
    ingest([paths["c"]], folder / "c.store")
    for name in ("ab", "c"):
        store = folder / f"{name}_tokens.store"
        shutil.copytree(folder / f"{name}.store", store)
        view = TokenView(Path(tokenize(pilestore.open(store), model)["view"]))
        build_indexes(view, pilestore.open(store), 64, 16, "bestfit")
    return {**paths, **{p.stem: p for p in folder.glob("*.store")}, "model": model}


def sweep(mode: str, template: Path, work: Path, *argv: str) -> tuple[list[dict], dict]:
    done = subprocess.run(
        [sys.executable, str(KILLPOINTS), mode, str(template), str(work), STEPS[mode], *argv],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return lines[:-1], lines[-1]


@pytest.mark.parametrize("mode", ["kill", "fail", "interrupt"])
@pytest.mark.parametrize("command", ["ingest", "tokenize", "index", "merge", "export"])
def test_stopped_before_each_file_step_reruns_to_the_same_store(
    command: str, mode: str, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """Stopped just before each rename, unlink, copy (and, failing, fsync) a command makes (tests/killpoints.py):
    by kill -9, by a full disk (ENOSPC: exit 1, a one-line error naming the file, no temporary file left) or by
    Ctrl-C (exit 130, no temporary file left). Each way the re-run leaves exactly the files of an uninterrupted
    run (export: its output folder): no temporary file, no partial copy, nothing missing. (Before: a kill while
    tokenize copied tokenizer.model left it cut short for good; one before a JSON file's rename left a
    `.NAME.tmp-PID` behind; a merge killed after its commit never carried the token views over; a full disk at
    a token file's fsync said only 'No space left on device'; a failed rename in export named its removed
    temporary file.)"""
    tokens = ["--tokenizer", str(tiny["model"]), "--seq-len", "64", "--context", "16", "--workers", "1"]
    template, argv = {
        "ingest": (tmp_path / "none", ["ingest", str(tiny["a"]), str(tiny["b"]), "--store", "{store}"]),
        "tokenize": (tiny["ab"], ["tokenize", "--store", "{store}", *tokens]),
        "index": (tiny["ab_tokens"], ["index", "--store", "{store}", "--seq-len", "32", "--context", "8",
                                      "--val-fraction", "0.2"]),
        "merge": (tmp_path / "none", ["merge", str(tiny["ab_tokens"]), str(tiny["c_tokens"]), "--store", "{store}"]),
        "export": (tmp_path / "empty", ["export", "--store", str(tiny["ab"]), "--out", "{store}/all.jsonl.zst",
                                        "--force"]),
    }[command]  # fmt: skip
    (tmp_path / "empty").mkdir()
    points, summary = sweep(mode, template, tmp_path, *argv)
    steps, renames = (2, 1) if command == "export" else (5, 3)  # one file written, or many: all were reached
    assert len(points) == (summary["calls"] if mode == "kill" else summary["sites"]) >= steps, summary
    assert summary["by_name"].get("replace", 0) >= renames, summary
    for point in points:
        assert point["stopped"] == {"kill": -signal.SIGKILL, "fail": 1, "interrupt": 130}[mode], point  # reached
        assert point["problems"] == [] and point["rerun"] == 0 and point["differs"] == [], point
        if command == "export" and mode == "fail":  # the error names the output, not its temporary file
            assert point["error"].startswith(f"Error: {tmp_path / 'stopped.store' / 'all.jsonl.zst'}: "), point


def test_an_export_killed_midway_leaves_a_temp_file_that_the_next_export_removes(
    sample_store_dir: Path, tmp_path: Path
) -> None:
    """The output is written to `.NAME.tmp-PID` and renamed when complete; a kill -9 leaves that file (maybe GBs,
    hidden). The next export to the same name deletes the temp files of dead processes, not a live one's."""
    out = tmp_path / "all.jsonl.zst"
    live = tmp_path / f".all.jsonl.zst.tmp-{os.getpid()}"  # this process: alive, so not to be touched
    live.write_bytes(b"in progress")
    proc = start("export", "--store", str(sample_store_dir), "--out", str(out))
    temp = tmp_path / f".all.jsonl.zst.tmp-{proc.pid}"
    deadline = time.monotonic() + 60
    while not (temp.exists() and temp.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert temp.exists() and not out.exists()
    finish("export", "--store", str(sample_store_dir), "--out", str(out))
    assert not temp.exists() and live.read_bytes() == b"in progress"
    assert len(out.read_bytes()) > 1_000_000
