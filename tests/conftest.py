"""Shared fixtures: the real sample corpus (from ../shared), a store ingested from it once, and tiny shards."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import zstandard

import pilestore
from pilestore.ingest import ingest
from pilestore.tokenizer import TrainSettings, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PILESTORE_SHARED", ROOT.parent / "shared"))  # beside the clone, as CI has it
SAMPLE = SHARED / "corpus" / "sample.jsonl.zst"
SAMPLE_MANIFEST = SHARED / "corpus" / "sample.manifest.json"


def read_source_lines(path: Path) -> list[bytes]:
    """Every line of a .jsonl.zst, decompressed by the reference decoder (not pilestore's)."""
    with open(path, "rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()
    return raw.split(b"\n")[:-1] if raw.endswith(b"\n") else raw.split(b"\n")


@pytest.fixture(scope="session")
def sample_path() -> Path:
    if not SAMPLE.exists():
        pytest.fail(f"{SAMPLE} is missing: the tests read the shared sample corpus beside the repository")
    return SAMPLE


@pytest.fixture(scope="session")
def sample_records(sample_path: Path) -> list[dict]:
    """The source's lines parsed by the stdlib (which, unlike orjson, accepts lone surrogates)."""
    return [json.loads(line) for line in read_source_lines(sample_path)]


@pytest.fixture(scope="session")
def sample_store_dir(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> Path:
    store = tmp_path_factory.mktemp("sample") / "sample.store"
    ingest([sample_path], store)
    return store


ShardMaker = Callable[..., Path]


@pytest.fixture
def make_shard(tmp_path: Path) -> ShardMaker:
    """make_shard(lines, name=..., compress=True): write raw lines (bytes or JSON-able objects) as a shard."""

    def make(lines: Iterable[bytes | dict | str], name: str = "shard.jsonl.zst", compress: bool = True) -> Path:
        buf = io.BytesIO()
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            if isinstance(line, str):
                line = line.encode()
            buf.write(line + b"\n")
        data = buf.getvalue()
        path = tmp_path / name
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data) if compress else data)
        return path

    return make


def doc(text: str, subset: str = "Pile-CC", **meta: object) -> dict:
    return {"text": text, "meta": {"pile_set_name": subset, **meta}}


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> Path:
    """Two partitions of real sample lines (the first 600 and lines 1200-1500, quirks 2, 296, 577 included)."""
    lines = read_source_lines(sample_path)
    folder = tmp_path_factory.mktemp("tokens")
    shards = []
    for name, chunk in (("a.jsonl", lines[:600]), ("b.jsonl", lines[1200:1500])):
        (folder / name).write_bytes(b"\n".join(chunk) + b"\n")
        shards.append(folder / name)
    ingest(shards, folder / "small.store")
    return folder / "small.store"


@pytest.fixture(scope="session")
def model(small_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tok.model"
    options = {"vocab_size": 2000, "num_threads": 1}
    train_tokenizer(pilestore.open(small_store), out, TrainSettings(sample_docs=400, options=options))
    return out
