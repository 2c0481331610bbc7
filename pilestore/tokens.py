"""Tokenized views: a store's documents as token ids, one view per tokenizer, beside the text.

    store/tokens/<model>-<sha12>/
      view.json            written last (atomically): tokenizer hash, dtype, eod id, per-partition counts
      tokenizer.model      a copy of the tokenizer that made the view
      p00000.tokens        token ids of partition 0, documents one after another (uint16 if the vocabulary
                           fits, else uint32: checked, never truncated)
      p00000.bytes         uint32 per token: UTF-8 offset where the token ends in its document's text
      p00000.arrow         per document: start (int64, first token in p00000.tokens), n_tokens, n_bytes
      p00000.done          marker written after the three files: tokenizing is resumable per partition

A different tokenizer gives a different directory; tokenizing a store again does only partitions not yet done.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PilestoreError
from .manifest import now, write_atomic, writer_lock
from .shards import file_sha256
from .store import Store
from .tokenizer import Tokenizer

TOKENS_DIR = "tokens"
VIEW_FILE = "view.json"
BATCH_DOCS = 512  # documents per encode call: sentencepiece spreads a batch over its threads


class TokensError(PilestoreError):
    """A tokenized view that is missing, incomplete or does not match its store."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (ids beyond uint32 are refused)."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise TokensError(f"vocabulary of {vocab_size:,} ids does not fit 32 bits")


def view_dir(store: Store, tokenizer: Tokenizer) -> Path:
    """tokens/<stem>-<sha256[:12]>: the view of this tokenizer, found by its hash whatever the file is called."""
    same = sorted((store.path / TOKENS_DIR).glob(f"*-{tokenizer.sha256[:12]}"))
    return same[0] if same else store.path / TOKENS_DIR / f"{tokenizer.path.stem}-{tokenizer.sha256[:12]}"


@dataclass(frozen=True, slots=True)
class PartitionTokens:
    """One partition's token files, memory-mapped."""

    tokens: np.ndarray
    byte_ends: np.ndarray
    start: np.ndarray
    n_tokens: np.ndarray
    n_bytes: np.ndarray


def _write_partition(
    store: Store,
    p: int,
    tokenizer: Tokenizer,
    folder: Path,
    dtype: np.dtype,
    threads: int,
    on_docs: Callable[[int], None],
) -> dict[str, int]:
    import pyarrow as pa

    stem = folder / f"p{p:05d}"
    tmp = {ext: stem.with_suffix(f".{ext}.tmp") for ext in ("tokens", "bytes", "arrow")}
    starts: list[int] = []
    counts_list: list[int] = []
    sizes: list[int] = []
    position = 0
    hashes = {"tokens": hashlib.sha256(), "bytes": hashlib.sha256()}  # of what is written, as it is written
    with open(tmp["tokens"], "wb") as tok_out, open(tmp["bytes"], "wb") as bytes_out:
        batch: list[str] = []

        def flush() -> None:
            nonlocal position
            ids, ends, counts = tokenizer.encode_batch(batch, threads=threads)
            if len(ids) and ids.max() >= tokenizer.vocab_size:
                raise TokensError(f"token id {ids.max()} outside the vocabulary of {tokenizer.vocab_size}")
            if len(ends) and ends.max() >= 1 << 32:
                raise TokensError("a document over 4 GiB cannot carry uint32 byte offsets")
            for out, data in ((tok_out, ids.astype(dtype).tobytes()), (bytes_out, ends.astype(np.uint32).tobytes())):
                out.write(data)
                hashes["tokens" if out is tok_out else "bytes"].update(data)
            starts.extend((position + np.concatenate(([0], np.cumsum(counts)[:-1]))).tolist())
            counts_list.extend(counts.tolist())
            position += len(ids)
            on_docs(len(batch))
            batch.clear()

        for document in store.iter_partition(p):
            batch.append(document.text)
            sizes.append(len(document.text.encode("utf-8", "surrogatepass")))
            if len(batch) >= BATCH_DOCS:
                flush()
        if batch:
            flush()
        for fh in (tok_out, bytes_out):
            fh.flush()
            os.fsync(fh.fileno())
    table = pa.table(
        {
            "start": pa.array(starts, pa.int64()),
            "n_tokens": pa.array(counts_list, pa.int64()),
            "n_bytes": pa.array(sizes, pa.int64()),
        }
    )
    with open(tmp["arrow"], "wb") as fh:
        with pa.ipc.new_file(fh, table.schema) as writer:
            writer.write_table(table)
        os.fsync(fh.fileno())
    sha256 = {ext: h.hexdigest() for ext, h in hashes.items()}
    sha256["arrow"] = file_sha256(tmp["arrow"])
    for ext, path in tmp.items():
        os.replace(path, stem.with_suffix(f".{ext}"))
    done = {"documents": len(counts_list), "tokens": position, "bytes": int(sum(sizes)), "sha256": sha256}
    write_atomic(stem.with_suffix(".done"), json.dumps(done).encode())
    return done


def tokenize(
    store: Store, tokenizer_path: Path, *, threads: int = 1, on_docs: Callable[[int], None] = lambda n: None
) -> dict[str, Any]:
    """Tokenize every partition not yet done; returns the view's description (also written to view.json)."""
    tokenizer = Tokenizer(tokenizer_path)
    folder = view_dir(store, tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    with writer_lock(store.path):
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "tokenizer.model").exists():
            shutil.copyfile(tokenizer.path, folder / "tokenizer.model")
        for leftover in folder.glob("*.tmp"):
            leftover.unlink()
        parts = []
        for p in range(store.num_partitions):
            marker = folder / f"p{p:05d}.done"
            done = json.loads(marker.read_text()) if marker.exists() else None
            if done is None:
                done = _write_partition(store, p, tokenizer, folder, dtype, threads, on_docs)
            else:
                on_docs(done["documents"])
            parts.append({"partition": p, **done})
        view = {
            "tokenizer": {
                "file": tokenizer.path.name,
                "sha256": tokenizer.sha256,
                "vocab_size": tokenizer.vocab_size,
                "eod_id": tokenizer.eod_id,
            },
            "dtype": dtype.name,
            "documents": sum(x["documents"] for x in parts),
            "tokens": sum(x["tokens"] for x in parts),
            "bytes": sum(x["bytes"] for x in parts),
            "partitions": parts,
            "updated": now(),
        }
        write_atomic(folder / VIEW_FILE, json.dumps(view, indent=1).encode())
    return {"view": str(folder), **view}


def subset_stats(store: Store, view: TokenView) -> dict[str, dict[str, float]]:
    """Documents, tokens, bytes and tokens per byte per subset (from the store index and the view's tables)."""
    tokens: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    docs: dict[str, int] = {}
    for p in range(store.num_partitions):
        names = store.manifest["partitions"][p]["subsets"]
        local = store.index(p).subset
        part = view.partition(p)
        per_tokens = np.bincount(local, weights=part.n_tokens, minlength=len(names))
        per_bytes = np.bincount(local, weights=part.n_bytes, minlength=len(names))
        per_docs = np.bincount(local, minlength=len(names))
        for k, name in enumerate(names):
            tokens[name] = tokens.get(name, 0) + int(per_tokens[k])
            nbytes[name] = nbytes.get(name, 0) + int(per_bytes[k])
            docs[name] = docs.get(name, 0) + int(per_docs[k])
    return {
        name: {
            "documents": docs[name],
            "tokens": tokens[name],
            "bytes": nbytes[name],
            "tokens_per_byte": round(tokens[name] / nbytes[name], 4) if nbytes[name] else 0.0,
        }
        for name in sorted(tokens)
    }


class TokenView:
    """A complete tokenized view, memory-mapped: per-partition token ids, byte ends and document table."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / VIEW_FILE).read_text())
        except FileNotFoundError:
            raise TokensError(f"{folder}: no tokenized view here; run `pilestore tokenize`") from None
        self.dtype = np.dtype(self.meta["dtype"])
        self.eod_id = int(self.meta["tokenizer"]["eod_id"])
        self._parts: dict[int, PartitionTokens] = {}

    @property
    def num_partitions(self) -> int:
        return len(self.meta["partitions"])

    def partition(self, p: int) -> PartitionTokens:
        found = self._parts.get(p)
        if found is None:
            from .index import map_columns

            stem = self.folder / f"p{p:05d}"
            columns = map_columns(stem.with_suffix(".arrow"), ["start", "n_tokens", "n_bytes"])
            found = self._parts[p] = PartitionTokens(
                tokens=_random_memmap(stem.with_suffix(".tokens"), self.dtype),
                byte_ends=_random_memmap(stem.with_suffix(".bytes"), np.dtype(np.uint32)),
                **columns,
            )
        return found

    def doc_lengths(self) -> np.ndarray:
        """Tokens per document, all partitions in store order (int64)."""
        return (
            np.concatenate([self.partition(p).n_tokens for p in range(self.num_partitions)])
            if self.num_partitions
            else np.zeros(0, np.int64)
        )


def _random_memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    """np.memmap with MADV_RANDOM (samples are read at random: no read-ahead around each one)."""
    array = np.memmap(path, dtype=dtype, mode="r")
    mapped = getattr(array, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return array


def find_view(store: Store, tokenizer_path: Path | None) -> TokenView:
    """The store's tokenized view for this tokenizer, or its only view; a clear error otherwise."""
    if tokenizer_path is not None:
        return TokenView(view_dir(store, Tokenizer(tokenizer_path)))
    views = sorted(p.parent for p in (store.path / TOKENS_DIR).glob(f"*/{VIEW_FILE}"))
    if not views:
        raise PilestoreError(f"{store.path}: not tokenized yet; run `pilestore tokenize --tokenizer tok.model`")
    if len(views) > 1:
        names = ", ".join(v.name for v in views)
        raise PilestoreError(f"{store.path}: several tokenized views ({names}); pass --tokenizer to choose one")
    return TokenView(views[0])
