"""Ingest and tokenize as tasks on a real (local) Ray instance: the same files and result as a local run; a
failing task fails the command and leaves the store unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pilestore
from pilestore.errors import PilestoreError
from pilestore.ingest import ingest
from pilestore.tokens import tokenize

from .conftest import read_source_lines
from .killpoints import files


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sources(sample_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    lines = read_source_lines(sample_path)
    folder = tmp_path_factory.mktemp("ray-sources")
    out = []
    for k, chunk in enumerate((lines[:500], lines[500:900], lines[900:1200])):  # quirk lines 296, 577 included
        (folder / f"{k:02d}.jsonl").write_bytes(b"\n".join(chunk) + b"\n")
        out.append(folder / f"{k:02d}.jsonl")
    return out


def _partitions(store: Path) -> list[dict]:
    manifest = json.loads((store / "manifest.json").read_text())
    keys = ("source", "documents", "subsets", "files", "text_bytes", "stored_bytes")
    return [{k: entry.get(k) for k in keys} for entry in manifest["partitions"]]


def test_ray_ingest_and_tokenize_give_the_files_of_a_local_run(
    ray_instance: None, sources: list[Path], model: Path, tmp_path: Path
) -> None:
    local, on_ray = tmp_path / "local.store", tmp_path / "ray.store"
    ingest(sources, local, workers=2, threads=1)
    progress: list[tuple[int, int]] = []
    report = ingest(sources, on_ray, threads=1, executor="ray", on_progress=lambda b, d: progress.append((b, d)))
    assert report.as_dict()["documents"] == len(pilestore.open(local)) == 1200
    assert _partitions(on_ray) == _partitions(local)  # same sources, counts and file hashes, in the same order
    assert sorted(progress) == sorted((s.stat().st_size, d) for s, d in zip(sources, [500, 400, 300], strict=True))
    a, b = pilestore.open(local), pilestore.open(on_ray)
    assert all(a[i].to_record() == b[i].to_record() for i in range(len(a)))
    assert not (on_ray / ".staging").exists() or not any((on_ray / ".staging").iterdir())

    views = {}
    for store, executor in ((local, "local"), (on_ray, "ray")):
        result = tokenize(pilestore.open(store), model, threads=1, executor=executor)
        views[executor] = result
    assert [p["sha256"] for p in views["ray"]["partitions"]] == [p["sha256"] for p in views["local"]["partitions"]]
    assert views["ray"]["tokens"] == views["local"]["tokens"] > 0


def test_a_failing_ray_task_fails_the_ingest_and_leaves_the_store_unchanged(
    ray_instance: None, sample_path: Path, sources: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine", "meta": {"pile_set_name": "Pile-CC"}}\n{"text": broken}\n')
    store = tmp_path / "s.store"
    ingest(sources[:1], store, threads=1, executor="ray")
    before = (store / "manifest.json").read_bytes()
    with pytest.raises(PilestoreError, match=r"bad.jsonl:2: not JSON"):  # fails while the big source is building
        ingest([sample_path, bad], store, threads=1, executor="ray", strict=True)
    assert (store / "manifest.json").read_bytes() == before and len(pilestore.open(store)) == 500
    ingest([sample_path], store, threads=1, executor="ray")  # at once: no cancelled task still writes
    assert len(pilestore.open(store)) == 500 + len(read_source_lines(sample_path))


def _kill_task_when_it_runs(title: str, killed: list[str]) -> threading.Thread:
    """A thread that SIGKILLs the first Ray worker process found running the task `title` (Ray names a busy
    worker `ray::FUNCTION`), as the kernel's OOM killer or a lost node would, and notes what it killed."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for line in subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines():
                pid, _, args = line.strip().partition(" ")
                if args.startswith(f"ray::{title}"):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(args)
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_ray_task_killed_midway_fails_clearly_and_a_rerun_finishes(
    ray_instance: None, sample_path: Path, sources: list[Path], model: Path, tmp_path: Path
) -> None:
    """A task's worker process killed (out of memory, node lost): the command fails with an error that names
    the source or partition and says to re-run (not Ray's traceback), commits nothing, and its re-run gives
    the files of a run that was never stopped."""
    store, local = tmp_path / "killed.store", tmp_path / "local.store"
    killed: list[str] = []
    watcher = _kill_task_when_it_runs("_build_one", killed)
    with pytest.raises(PilestoreError, match=r"sample\.jsonl\.zst: its Ray task was lost \(WorkerCrashedError: .*\)\. "
                       r"Re-run the same command to finish"):  # fmt: skip
        ingest([sample_path], store, threads=1, executor="ray")
    watcher.join()
    assert killed and not (store / "manifest.json").exists()
    ingest([sample_path], store, threads=1, executor="ray")
    ingest([sample_path], local, threads=1)
    assert files(store) == files(local)  # .staging/ empty: the killed task's folder is gone

    store, local = tmp_path / "killed-tokens.store", tmp_path / "local-tokens.store"
    for s in (store, local):
        ingest(sources, s, threads=1)
    killed.clear()
    watcher = _kill_task_when_it_runs("_partition_task", killed)
    with pytest.raises(PilestoreError, match=r"tokenize partition \d: its Ray task was lost \(WorkerCrashedError"):
        tokenize(pilestore.open(store), model, threads=1, executor="ray")
    watcher.join()
    assert killed and not list((store / "tokens").glob("*/view.json"))
    tokenize(pilestore.open(store), model, threads=1, executor="ray")
    tokenize(pilestore.open(local), model, threads=1)
    assert files(store) == files(local)


def test_the_cli_runs_on_ray(sources: list[Path], tmp_path: Path) -> None:
    store = tmp_path / "cli.store"
    done = subprocess.run(
        [sys.executable, "-m", "pilestore", "ingest", *map(str, sources[:2]), "--store", str(store),
         "--executor", "ray", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["documents"] == 900 == len(pilestore.open(store))


def test_a_killed_ray_task_leaves_the_clis_stdout_to_its_own_output(sample_path: Path, tmp_path: Path) -> None:
    """Ray's driver prints a worker's death on standard output ("(raylet) A worker died..."): the CLI sends
    that to standard error, so `--json` output is never mixed with it; the error names the source."""
    killed: list[str] = []
    watcher = _kill_task_when_it_runs("_build_one", killed)
    done = subprocess.run(
        [sys.executable, "-m", "pilestore", "ingest", str(sample_path), "--store", str(tmp_path / "s.store"),
         "--executor", "ray", "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    watcher.join()
    assert killed and done.returncode == 1
    assert done.stdout == ""
    assert "sample.jsonl.zst: its Ray task was lost (WorkerCrashedError" in done.stderr
    assert "A worker died or was killed while executing a task" in done.stderr  # Ray's line, moved here
