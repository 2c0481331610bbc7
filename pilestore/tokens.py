"""Tokenized views: a store's documents as token ids, one view per tokenizer, beside the text.

    store/tokens/<model>-<sha12>/
      view.json            written last (atomically): tokenizer hash, dtype, eod id, per-partition counts
      tokenizer.model      a copy of the tokenizer that made the view
      p00000.tokens        token ids of partition 0, documents one after another (uint16 if the vocabulary
                           fits, else uint32: checked, never truncated)
      p00000.lens          uint8 per token: the UTF-8 bytes of its document it covers (255: see .long)
      p00000.long          int64 (position, length) pairs of the tokens of 255 bytes or more (token_bytes.py)
      p00000.arrow         per document: start (int64, first token in p00000.tokens), n_tokens, n_bytes
      p00000.sums          uint64 xxh3 of each 4 KiB block of p00000.tokens: every read checks the blocks it
                           touches, so a damaged token file gives an error, never other tokens
      p00000.done          marker written after the five files: tokenizing is resumable per partition

A different tokenizer gives a different directory; tokenizing a store again does only partitions not yet done.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from xxhash import xxh3_64_intdigest as _xxh3_64

from . import token_bytes
from .atomic import copy_atomic, naming
from .cluster import check_executor, run_tasks
from .document import encode_text
from .errors import PilestoreError
from .manifest import now, read_sealed, write_sealed, writer_lock
from .shards import file_sha256
from .store import Store
from .tokenizer import Tokenizer, TokenizerError

TOKENS_DIR = "tokens"
VIEW_FILE = "view.json"
BATCH_DOCS = 512  # documents per encode call: sentencepiece spreads a batch over its threads
BLOCK = 4096  # bytes of a token file per checksum (a page: a sample read hashes one to three of them)
FILES = ("tokens", "lens", "long", "arrow", "sums")  # a partition's files; its .done marker comes after them
OLDER = "tokenized by an older pilestore ({}); delete it and run `pilestore tokenize` again"


class TokensError(PilestoreError):
    """A tokenized view that is missing, incomplete or does not match its store."""


class ViewBehindError(TokensError):
    """A view or sample index made before documents were added: reading it would leave them out unseen."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (ids beyond uint32 are refused)."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise TokensError(f"vocabulary of {vocab_size:,} ids does not fit 32 bits")


def view_dir(store: Store, tokenizer: Path, sha256: str) -> Path:
    """tokens/<stem>-<sha256[:12]>: the view of the tokenizer file whose bytes have this sha256, found by its hash
    whatever the file is called."""
    same = sorted((store.path / TOKENS_DIR).glob(f"*-{sha256[:12]}"))
    return same[0] if same else store.path / TOKENS_DIR / f"{tokenizer.stem}-{sha256[:12]}"


class TokenDamageError(TokensError):
    """A token file whose bytes no longer match their checksums."""


def block_sums(path: Path, chunk: int = 4096 * BLOCK) -> np.ndarray:
    """xxh3_64 of each BLOCK bytes of a file (the last block may be shorter)."""
    sums: list[int] = []
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            view = memoryview(data)
            sums.extend(_xxh3_64(view[at : at + BLOCK]) for at in range(0, len(data), BLOCK))
    return np.array(sums, dtype=np.uint64)


@dataclass(frozen=True, slots=True)
class PartitionTokens:
    """One partition's token files, memory-mapped."""

    tokens: np.ndarray
    lengths: np.ndarray  # uint8 per token (token_bytes.py; the pairs of long tokens: TokenView.long_pairs)
    start: np.ndarray
    n_tokens: np.ndarray
    n_bytes: np.ndarray
    sums: np.ndarray  # uint64 per BLOCK bytes of tokens
    path: Path  # the tokens file, for errors
    data: memoryview  # the token file's bytes, for hashing blocks

    def read(self, begin: int, end: int) -> np.ndarray:
        """tokens[begin:end] after checking the checksums of the blocks they lie in."""
        self.check_range(begin, end)
        size = self.tokens.itemsize
        self.check_blocks(np.arange(begin * size // BLOCK, (end * size - 1) // BLOCK + 1))
        return self.tokens[begin:end]

    def check_range(self, begin: int, end: int) -> None:
        """A clear error if tokens begin..end are not all in the file."""
        if not 0 <= begin <= end <= len(self.tokens):
            raise TokenDamageError(
                f"{self.path}: tokens {begin}..{end} lie outside the file's {len(self.tokens)} tokens; the sample "
                "index does not belong to this view: rebuild it with `pilestore index`"
            )

    def check_blocks(self, blocks: np.ndarray) -> None:
        """A clear error unless each of these BLOCK-byte blocks of the token file (an int64 array) matches its
        checksum: their sums read in one gather, each block hashed through a memoryview (a numpy slice and scalar
        per block cost 2.5x the time of the hashing itself)."""
        if not len(blocks):
            return
        sums, data = self.sums, self.data
        if blocks.min() < 0 or blocks.max() >= len(sums):
            self._damaged(int(blocks[(blocks < 0) | (blocks >= len(sums))][0]))
        for block, expected in zip(blocks.tolist(), sums[blocks].tolist(), strict=True):
            if _xxh3_64(data[block * BLOCK : (block + 1) * BLOCK]) != expected:
                self._damaged(block)

    def _damaged(self, block: int) -> None:
        at = block * BLOCK
        raise TokenDamageError(
            f"{self.path}: bytes {at}..{at + BLOCK} do not match their checksum in "
            f"{self.path.with_suffix('.sums')}: the file is damaged; `pilestore verify` lists what else "
            f"is, then delete {self.path.parent} and run `pilestore tokenize` again"
        )


def _write_partition(
    store: Store,
    p: int,
    tokenizer: Tokenizer,
    folder: Path,
    dtype: np.dtype,
    threads: int,
    on_docs: Callable[[int], None],
) -> dict[str, Any]:
    """Tokenize partition p into its five files, then its .done marker; a failure leaves none of them."""
    stem = folder / f"p{p:05d}"
    tmp = {ext: stem.with_suffix(f".{ext}.tmp") for ext in FILES}
    try:
        done = _write_files(store, p, tokenizer, tmp, dtype, threads, on_docs)
        for ext, path in tmp.items():
            os.replace(path, stem.with_suffix(f".{ext}"))
    except BaseException:
        for path in tmp.values():  # the files already renamed are not done until .done says so
            path.unlink(missing_ok=True)
        raise
    write_sealed(stem.with_suffix(".done"), done)
    return done


def _write_files(
    store: Store,
    p: int,
    tokenizer: Tokenizer,
    tmp: dict[str, Path],
    dtype: np.dtype,
    threads: int,
    on_docs: Callable[[int], None],
) -> dict[str, Any]:
    """The files of partition p at their temporary paths `tmp`, fsync'ed; returns the record for its .done."""
    import pyarrow as pa
    import xxhash

    from .index import arrow_batch

    # per flushed batch, each document's first token, tokens and UTF-8 bytes: 8 bytes a number, not a Python int
    columns: dict[str, list[np.ndarray]] = {"start": [], "n_tokens": [], "n_bytes": []}
    position = 0
    hashes = {ext: hashlib.sha256() for ext in ("tokens", "lens", "long")}  # of what is written, as it is written
    quick = {ext: xxhash.xxh3_128() for ext in ("lens", "long")}  # checked before every index build reads them
    with (
        open(tmp["tokens"], "wb") as tok_out,
        open(tmp["lens"], "wb") as lens_out,
        open(tmp["long"], "wb") as long_out,
    ):
        outs = {"tokens": tok_out, "lens": lens_out, "long": long_out}
        batch: list[str] = []

        def flush() -> None:
            nonlocal position
            ids, ends, counts = tokenizer.encode_batch(batch, threads=threads)
            if len(ids) and ids.max() >= tokenizer.vocab_size:
                raise TokensError(f"token id {ids.max()} outside the vocabulary of {tokenizer.vocab_size}")
            lengths, pairs = token_bytes.encode(ends, counts, position)
            for ext, data in (("tokens", ids.astype(dtype)), ("lens", lengths), ("long", pairs)):
                raw = data.tobytes()
                with naming(tmp[ext]):
                    outs[ext].write(raw)
                hashes[ext].update(raw)
                if ext in quick:
                    quick[ext].update(raw)
            columns["start"].append(position + np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64))
            columns["n_tokens"].append(np.asarray(counts, np.int64))
            columns["n_bytes"].append(np.array([len(encode_text(text)) for text in batch], np.int64))
            position += len(ids)
            on_docs(len(batch))
            batch.clear()

        for document in store.iter_partition(p):
            batch.append(document.text)
            if len(batch) >= BATCH_DOCS:
                flush()
        if batch:
            flush()
        for ext, fh in outs.items():
            with naming(tmp[ext]):
                fh.flush()
                os.fsync(fh.fileno())
    table = arrow_batch({key: np.concatenate(chunks or [np.zeros(0, np.int64)]) for key, chunks in columns.items()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_batch(table)  # one batch, also for a partition of no documents (readers expect one)
    small = {"arrow": sink.getvalue().to_pybytes(), "sums": block_sums(tmp["tokens"]).astype("<u8").tobytes()}
    for ext, data in small.items():  # written and hashed from memory: not read back
        with naming(tmp[ext]), open(tmp[ext], "wb") as fh:
            fh.write(data)
            os.fsync(fh.fileno())
    sha256 = {ext: h.hexdigest() for ext, h in hashes.items()} | {
        ext: hashlib.sha256(data).hexdigest() for ext, data in small.items()
    }
    xxh3 = {ext: h.hexdigest() for ext, h in quick.items()}
    xxh3["arrow"] = xxhash.xxh3_128_hexdigest(small["arrow"])
    return {
        "documents": table.num_rows,
        "tokens": position,
        "bytes": int(table.column("n_bytes").to_numpy().sum()),
        "sha256": sha256,
        "xxh3": xxh3,
    }


def _partition_task(store_path: Path, p: int, tokenizer_path: Path, folder: Path, threads: int) -> dict[str, Any]:
    """One partition as a Ray task: opens the store and the tokenizer where it runs."""
    from . import open as open_store

    tokenizer = Tokenizer(tokenizer_path)
    dtype = token_dtype(tokenizer.vocab_size)
    return _write_partition(open_store(store_path), p, tokenizer, folder, dtype, threads, lambda n: None)


def tokenize(
    store: Store,
    tokenizer_path: Path,
    *,
    threads: int = 1,
    on_docs: Callable[[int], None] = lambda n: None,
    executor: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Tokenize every partition not yet done; returns the view's description (also written to view.json).

    executor="ray": one Ray task per partition (each with `threads` threads and as many CPUs) reading the
    store and the view's copy of the tokenizer from storage every node sees; view.json is written here."""
    check_executor(executor)
    tokenizer = Tokenizer(tokenizer_path)
    folder = view_dir(store, tokenizer.path, tokenizer.sha256)
    dtype = token_dtype(tokenizer.vocab_size)
    with writer_lock(store.path):
        folder.mkdir(parents=True, exist_ok=True)
        copy_atomic(tokenizer.path, folder / "tokenizer.model")  # whole even if a run was killed copying it
        found: dict[int, dict[str, Any]] = {}
        for p in range(store.num_partitions):
            marker = folder / f"p{p:05d}.done"
            if marker.exists():
                found[p] = read_sealed(marker, f"delete it to tokenize partition {p} again")
                if not set(FILES) <= set(found[p].get("sha256", {})):
                    raise TokensError(f"{folder}: " + OLDER.format(f"{marker.name} lists other files than {FILES}"))
                on_docs(found[p]["documents"])
        todo = [p for p in range(store.num_partitions) if p not in found]
        if executor == "ray":
            jobs = [(store.path, p, folder / "tokenizer.model", folder, threads) for p in todo]
            names = [f"{store.path}: tokenize partition {p}" for p in todo]
            results = run_tasks(_partition_task, jobs, address=address, num_cpus=threads,
                                on_done=lambda k, done: on_docs(done["documents"]), names=names)  # fmt: skip
            found.update(zip(todo, results, strict=True))
        else:
            for p in todo:
                found[p] = _write_partition(store, p, tokenizer, folder, dtype, threads, on_docs)
        parts = [{"partition": p, **found[p]} for p in range(store.num_partitions)]
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
        write_sealed(folder / VIEW_FILE, view)
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
    """A complete tokenized view, memory-mapped: per-partition token ids, byte lengths and document table."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        try:
            self.meta = read_sealed(self.folder / VIEW_FILE, "run `pilestore tokenize` again to rewrite it")
        except FileNotFoundError:
            raise TokensError(f"{folder}: no tokenized view here; run `pilestore tokenize`") from None
        self.dtype = np.dtype(self.meta["dtype"])
        self.eod_id = int(self.meta["tokenizer"]["eod_id"])
        self._parts: dict[int, PartitionTokens] = {}
        self._long: dict[int, np.ndarray] = {}  # read only when byte counts are needed (index builds), not by readers
        self._inputs_checked = False

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (into spawned or forkserver DataLoader workers) without the maps this process opened: the
        other process maps the files itself, on first use."""
        return {**self.__dict__, "_parts": {}, "_long": {}}

    @property
    def num_partitions(self) -> int:
        return len(self.meta["partitions"])

    def partition(self, p: int) -> PartitionTokens:
        found = self._parts.get(p)
        if found is None:
            from .index import map_columns

            stem = self.folder / f"p{p:05d}"
            missing = [ext for ext in ("sums", "lens") if not stem.with_suffix(f".{ext}").exists()]
            if missing:
                raise TokensError(f"{self.folder}: " + OLDER.format(f"no {stem.name}.{missing[0]}"))
            columns = map_columns(stem.with_suffix(".arrow"), ["start", "n_tokens", "n_bytes"])
            tokens = _random_memmap(stem.with_suffix(".tokens"), self.dtype)
            found = self._parts[p] = PartitionTokens(
                tokens=tokens,
                lengths=_random_memmap(stem.with_suffix(".lens"), np.dtype(np.uint8)),
                **columns,
                sums=_random_memmap(stem.with_suffix(".sums"), np.dtype("<u8")),
                path=stem.with_suffix(".tokens"),
                data=memoryview(tokens.view(np.uint8)),
            )
        return found

    def long_pairs(self, p: int) -> np.ndarray:
        """Partition p's (position, length) pairs of tokens of 255 bytes or more (token_bytes.py), read once."""
        found = self._long.get(p)
        if found is None:
            path = self.folder / f"p{p:05d}.long"
            found = self._long[p] = token_bytes.read_pairs(path, len(self.partition(p).tokens))
        return found

    def byte_ends(self, p: int, doc: int) -> np.ndarray:
        """Where each token of document `doc` (local to partition p) ends in its UTF-8 text."""
        part = self.partition(p)
        begin = int(part.start[doc])
        lengths = part.lengths[begin : begin + int(part.n_tokens[doc])]
        return token_bytes.byte_ends(lengths, self.long_pairs(p), begin)

    def byte_counter(self, p: int) -> token_bytes.PrefixSums:
        """For positions k of partition p's tokens that rise from call to call, the bytes its tokens 0..k-1 cover
        (token_bytes.py): the .lens file is read front to back once, in bounded chunks, never mapped."""
        return token_bytes.PrefixSums(self.folder / f"p{p:05d}.lens", self.long_pairs(p))

    def check_build_inputs(self) -> None:
        """Before an index build: the document tables and byte lengths it reads match their recorded xxh3."""
        import xxhash

        if self._inputs_checked:
            return
        for entry in self.meta["partitions"]:
            stem = self.folder / f"p{entry['partition']:05d}"
            for ext, expected in entry.get("xxh3", {}).items():
                hasher = xxhash.xxh3_128()
                if not stem.with_suffix(f".{ext}").exists():
                    raise TokenDamageError(
                        f"{stem.with_suffix(f'.{ext}')}: missing from the view; delete {self.folder} and run "
                        "`pilestore tokenize` again"
                    )
                with open(stem.with_suffix(f".{ext}"), "rb") as fh:
                    while data := fh.read(1 << 24):
                        hasher.update(data)
                if hasher.hexdigest() != expected:
                    raise TokenDamageError(
                        f"{stem.with_suffix(f'.{ext}')}: does not match the xxh3 recorded in "
                        f"{self.folder / VIEW_FILE}: the file is damaged; delete {self.folder} and run "
                        "`pilestore tokenize` again"
                    )
        self._inputs_checked = True

    def doc_lengths(self) -> np.ndarray:
        """Tokens per document, all partitions in store order (int64)."""
        return (
            np.concatenate([self.partition(p).n_tokens for p in range(self.num_partitions)])
            if self.num_partitions
            else np.zeros(0, np.int64)
        )


def _random_memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    """np.memmap with MADV_RANDOM (samples are read at random: no read-ahead around each one)."""
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise TokenDamageError(
            f"{path}: {size} bytes, not a whole number of {dtype.itemsize}-byte items: the file is damaged (cut "
            f"short?); `pilestore verify` lists what else is, then delete {path.parent} and run "
            "`pilestore tokenize` again"
        )
    if size == 0:  # mmap refuses empty files
        return np.zeros(0, dtype)
    array = np.memmap(path, dtype=dtype, mode="r")
    mapped = getattr(array, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return array.view(np.ndarray)  # a plain array over the map (slicing a np.memmap costs ~2 us more)


def find_view(store: Store, tokenizer_path: Path | None) -> TokenView:
    """The store's tokenized view for this tokenizer, or its only view; a clear error otherwise."""
    views = sorted(p.parent for p in (store.path / TOKENS_DIR).glob(f"*/{VIEW_FILE}"))
    if tokenizer_path is not None:  # found by the file's hash: the tokenizer itself is not loaded (nor numba)
        if not Path(tokenizer_path).is_file():
            raise TokenizerError(f"{tokenizer_path}: no such tokenizer file")
        folder = view_dir(store, Path(tokenizer_path), file_sha256(Path(tokenizer_path)))
        if folder not in views:
            names = ", ".join(v.name for v in views) or "none"
            raise TokensError(
                f"{store.path}: not tokenized with {tokenizer_path} (its views: {names}); "
                f"run `pilestore tokenize --tokenizer {tokenizer_path}`"
            )
    elif not views:
        raise PilestoreError(f"{store.path}: not tokenized yet; run `pilestore tokenize --tokenizer tok.model`")
    elif len(views) > 1:
        names = ", ".join(v.name for v in views)
        raise PilestoreError(f"{store.path}: several tokenized views ({names}); pass --tokenizer to choose one")
    else:
        folder = views[0]
    view = TokenView(folder)
    check_covers(view, store)
    return view


def check_covers(view: TokenView, store: Store) -> None:
    """Refuse a view that does not hold the store's partitions as they are: one tokenized before sources were
    added (ViewBehindError: training on it would leave their documents out without a word), or one whose
    partitions hold other numbers of documents than the store's (made for another store). A view may have
    more partitions than `store`: sources added and tokenized since this Store was opened."""
    listed = store.manifest["partitions"]
    for entry in view.meta["partitions"][: len(listed)]:
        p = int(entry["partition"])
        theirs = int(listed[p]["documents"])
        if int(entry["documents"]) != theirs:
            raise TokensError(
                f"{view.folder}: its partition {p} holds {entry['documents']:,} documents, the store's "
                f"{theirs:,}: the view was made for another store; delete {view.folder} and run `pilestore tokenize`"
            )
    if view.num_partitions < len(listed):
        added = listed[view.num_partitions :]
        names = ", ".join(entry["source"]["name"] for entry in added[:3])
        more = f" and {len(added) - 3} more sources" if len(added) > 3 else ""
        raise ViewBehindError(
            f"{view.folder}: tokenized {view.num_partitions} of the store's {len(listed)} partitions; the "
            f"{sum(int(entry['documents']) for entry in added):,} documents of {names}{more}, added since, "
            f"would be left out. Tokenize them (the view's sample indexes are rebuilt with them): `pilestore "
            f"tokenize --store {store.path} --tokenizer {view.folder / 'tokenizer.model'}`, or wait for the "
            "one that is running"
        )
