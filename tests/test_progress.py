"""Long commands show progress on a terminal (stderr a real pseudo-terminal here) and nothing in a pipe."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pilestore
from pilestore.tokenizer import TrainSettings, train_tokenizer
from pilestore.tokens import tokenize

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run `pilestore ARGS` with stderr on a pseudo-terminal; (exit status, every line it drew, escapes removed)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    command = [sys.executable, "-m", "pilestore", *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    drawn = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # the other end closed (Linux: EIO)
                break
            if not data:
                break
            drawn.append(data)
        elif process.poll() is not None:
            break
    os.close(master)
    text = _ESCAPES.sub("", b"".join(drawn).decode(errors="replace"))
    return process.wait(timeout=300), "\n".join(line.strip() for line in re.split(r"[\r\n]", text) if line.strip())


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, small_store: Path, model: Path) -> Path:
    """s.store: the small store, tokenized (each case runs alone too); u.store: the same, not tokenized."""
    folder = tmp_path_factory.mktemp("progress")
    shutil.copytree(small_store, folder / "u.store", ignore=shutil.ignore_patterns("tokens"))
    shutil.copytree(folder / "u.store", folder / "s.store")
    shutil.copy(model, folder / "tok.model")
    tokenize(pilestore.open(folder / "s.store"), folder / "tok.model")
    return folder


CASES = {  # command: what its progress display holds
    "ingest": (["ingest", "{corpus}", "--store", "new.store"], ["ingest", "MB/s", "docs/s"]),
    "train-tokenizer": (
        ["train-tokenizer", "--store", "s.store", "--vocab-size", "2000", "--sample-docs", "300", "--out", "t.model"],
        ["reading sampled documents", "/300", "docs/s", "training sentencepiece (2,000 pieces)"],
    ),
    "tokenize": (
        ["tokenize", "--store", "u.store", "--tokenizer", "tok.model", "--seq-len", "128", "--context", "32"],
        ["tokenize", "/900", "docs/s", "eval-L128-C32: windows", "eval-L128-C32: spans", "spans/s", "samples/s"],
    ),
    "index": (
        ["index", "--store", "s.store", "--seq-len", "64", "--context", "16"],
        ["eval-L64-C16: spans", "spans/s", "train-L64-C16-bestfit: samples", "samples/s", "bestfit: checksums"],
    ),
    "merge": (["merge", "s.store", "--store", "merged.store"], ["merging 1 store (files linked"]),
    "verify": (["verify", "--store", "s.store"], ["verify", "900/900", "docs/s"]),
    "export": (["export", "--store", "s.store", "--out", "all.jsonl.zst"], ["export", "900/900", "docs/s"]),
}


def _clean(work: Path) -> None:
    """Remove what the cases make, so that each run does its work again."""
    for path in ("new.store", "t.model", "all.jsonl.zst", "merged.store", "u.store/tokens"):
        shutil.rmtree(work / path) if (work / path).is_dir() else (work / path).unlink(missing_ok=True)


@pytest.mark.parametrize("command", list(CASES))
def test_progress_shows_on_a_terminal_not_in_a_pipe_nor_with_quiet(work: Path, sample_path: Path, command: str) -> None:
    args, shown = CASES[command]
    args = [a.replace("{corpus}", str(sample_path)) for a in args]
    _clean(work)
    status, drawn = on_terminal(args, work)
    assert status == 0, drawn[-2000:]
    for piece in shown:
        assert piece in drawn, (piece, drawn[-2000:])
    _clean(work)
    piped = subprocess.run(
        [sys.executable, "-m", "pilestore", *args], cwd=work, capture_output=True, text=True, timeout=300
    )
    assert piped.returncode == 0, piped.stderr
    assert not any(piece in piped.stderr for piece in shown if piece != command), piped.stderr
    assert "━" not in piped.stderr and "\r" not in piped.stderr
    _clean(work)
    status, drawn = on_terminal([*args, "--quiet"], work)
    assert status == 0 and not any(piece in drawn for piece in shown if piece != command), drawn[-2000:]


def test_train_tokenizer_reports_reading_each_sampled_document_then_training(small_store: Path, tmp_path: Path) -> None:
    calls: list[tuple[str, int | None]] = []
    read = []

    def on_stage(stage: str, total: int | None):  # noqa: ANN202
        calls.append((stage, total))
        return read.append

    settings = TrainSettings(sample_docs=250, options={"vocab_size": 1000, "num_threads": 1})
    result = train_tokenizer(pilestore.open(small_store), tmp_path / "t.model", settings, on_stage=on_stage)
    assert calls == [("sample", 250), ("train", None)] and result["documents"] == 250
    assert read == [1] * 250


def test_an_index_build_reports_its_stages_and_every_span_and_sample(work: Path) -> None:
    from pilestore.indexes import build_indexes
    from pilestore.tokens import TokenView

    store = pilestore.open(work / "s.store")
    view = TokenView(next((work / "s.store" / "tokens").iterdir()))
    calls: list[tuple[str, int | None, str]] = []
    done: dict[str, int] = {}

    def on_stage(label: str, total: int | None, unit: str):  # noqa: ANN202
        calls.append((label, total, unit))
        return lambda n: done.__setitem__(label, done.get(label, 0) + n)

    infos = build_indexes(view, store, 48, 8, "greedy", on_stage=on_stage)
    expected = []
    for info in infos:
        name = info["name"]
        expected += [(f"{name}: windows", None, ""), (f"{name}: spans", info["spans"], "spans"),
                     (f"{name}: samples", info["samples"], "samples"), (f"{name}: checksums", None, "")]  # fmt: skip
        assert done[f"{name}: spans"] == info["spans"] and done[f"{name}: samples"] == info["samples"]
    assert calls == expected and [info["name"] for info in infos] == ["eval-L48-C8", "train-L48-C8-greedy"]
