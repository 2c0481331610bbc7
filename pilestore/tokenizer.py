"""Tokenizers: train a sentencepiece model on a store, load one, encode documents with exact byte offsets.

    store --uniform random sample of documents (seeded)--> sentences --> SentencePieceTrainer (streamed,
    no temp file) --> tok.model

Encoding returns, per document, the token ids and for each token the UTF-8 byte offset where it ends in the
*original* text, read from sentencepiece's serialized protos (pieces.py): piece spans partition the text
(whitespace the normalizer removes is counted with the next token), so the bytes of any run of tokens are
exact and a document's tokens cover all its UTF-8 bytes (for bits per byte). A text that yields no token
(empty or whitespace only) covers none.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import remove_dead_temps, temp_name
from .errors import PilestoreError

EOD_PIECE = "[eod]"
HF_EOD_PIECES = (EOD_PIECE, "<|endoftext|>", "</s>")  # end-of-document token of a Hugging Face tokenizer.json
CHUNK_CHARS = 65536  # longer texts are encoded in pieces cut at whitespace, so threads share a long book
_SURROGATE = re.compile("[\ud800-\udfff]")

PILE_DEFAULTS: dict[str, Any] = {
    "model_type": "bpe",
    "vocab_size": 50000,
    "pad_id": 0,
    "unk_id": 1,
    "bos_id": -1,
    "eos_id": -1,
    "pad_piece": "[PAD]",
    "unk_piece": "[UNK]",
    "control_symbols": [EOD_PIECE],
}
"""The sentencepiece configuration used on the Pile; every key can be overridden."""


class TokenizerError(PilestoreError):
    """A tokenizer file that cannot be used."""


def for_tokenizer(text: str) -> str:
    """The text sentencepiece sees: lone surrogates (which it cannot take) become U+FFFD, which has the same
    3-byte UTF-8 length as a surrogate's surrogatepass form, so byte offsets still match the stored text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainSettings:
    """What train_tokenizer samples and how sentencepiece trains."""

    sample_docs: int | None = None
    """Documents to sample; default: as many as fit in sample_mb."""
    sample_mb: float = 100.0
    """Megabytes of text to sample when sample_docs is not given."""
    seed: int = 0
    max_sentence_chars: int = 4096
    """Lines longer than this are cut (sentencepiece skips over-long sentences)."""
    options: dict[str, Any] = field(default_factory=dict)
    """sentencepiece trainer options over PILE_DEFAULTS (e.g. {"vocab_size": 8000, "byte_fallback": True})."""

    def __post_init__(self) -> None:
        if self.sample_docs is not None and self.sample_docs < 1:
            raise ValueError(f"sample_docs must be >= 1, got {self.sample_docs}")
        if self.sample_mb <= 0:
            raise ValueError(f"sample_mb must be > 0, got {self.sample_mb}")
        if self.max_sentence_chars < 16:
            raise ValueError(f"max_sentence_chars must be >= 16, got {self.max_sentence_chars}")


def sample_indices(store: Any, settings: TrainSettings) -> np.ndarray:
    """Sorted, uniformly random document indices (seeded); subsets come out in proportion to their size."""
    n = len(store)
    rng = np.random.default_rng(settings.seed)
    if settings.sample_docs is not None:
        k = min(n, settings.sample_docs)
    else:  # enough documents for sample_mb at the store's mean document size
        text_bytes = sum(p["text_bytes"] for p in store.manifest["partitions"])
        mean = max(1, text_bytes // max(1, n))
        k = min(n, max(1, int(settings.sample_mb * 1e6 // mean)))
    return np.sort(rng.choice(n, size=k, replace=False))


def iter_sentences(
    store: Any, indices: np.ndarray, max_chars: int, on_document: Callable[[int], None] = lambda n: None
) -> Iterator[str]:
    """Non-empty lines of the sampled documents, cut to max_chars; on_document(1) after each document."""
    for i in indices:
        for line in for_tokenizer(store[int(i)].text).split("\n"):
            if line.strip():
                yield line[:max_chars]
        on_document(1)


StageCallback = Callable[[str, "int | None"], Callable[[int], None]]
"""start(stage, total) -> advance(n): "sample" (total: documents to read), then "train" (None: no known end)."""


def _no_stages(stage: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


def train_tokenizer(
    store: Any, out: Path, settings: TrainSettings, on_stage: StageCallback = _no_stages
) -> dict[str, Any]:
    """Train sentencepiece on a sample of `store` and write the model to `out`; returns what was done.

    sentencepiece reads every sampled sentence first ("sample", reported per document), then trains ("train")."""
    import sentencepiece as spm

    indices = sample_indices(store, settings)
    options = {**PILE_DEFAULTS, **settings.options}

    given = [0]  # sentences handed to sentencepiece

    def sentences() -> Iterator[str]:
        advance = on_stage("sample", len(indices))
        for sentence in iter_sentences(store, indices, settings.max_sentence_chars, advance):
            given[0] += 1
            yield sentence
        on_stage("train", None)

    model = io.BytesIO()
    try:
        _in_thread(
            lambda: spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(), model_writer=model, minloglevel=2, **options
            ),
            name="sentencepiece",
        )
    except RuntimeError as err:
        hint = ""
        if "required_chars" in str(err):
            hint = (
                " With pilestore: give a larger --vocab-size, or lower the coverage with "
                "--option character_coverage=0.9995."
            )
        elif not given[0]:
            hint = (
                f" The {len(indices):,} sampled documents hold no text: train on a store whose documents have"
                " text (or sample more of this one: --sample-docs, --sample-mb)."
            )
        raise TokenizerError(f"sentencepiece training failed: {err}.{hint}") from err
    remove_dead_temps(out)
    tmp = temp_name(out)
    try:  # a model file is whole or absent: an interrupted run leaves the one before it
        tmp.write_bytes(model.getvalue())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "model": str(out),
        "sha256": hashlib.sha256(model.getvalue()).hexdigest(),
        "documents": len(indices),
        "options": options,
    }


def _in_thread(fn: Callable[[], object], name: str) -> None:
    """fn() in a daemon thread while this thread waits in short joins, so that Ctrl-C (which Python raises in the
    main thread, between bytecodes) ends the wait at once, not after a C call of many minutes (sentencepiece
    trains without holding the GIL); fn's exception is raised here. Nothing is written by fn itself."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread as it is
            failure.append(err)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if failure:
        raise failure[0]


class Tokenizer:
    """A loaded tokenizer: `encode(texts)` -> per text (ids, byte ends); `eod_id`, `vocab_size`, `sha256`.

    A sentencepiece .model, or a Hugging Face tokenizer.json (told apart by content; needs the `hf` extra).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise TokenizerError(f"{path}: no such tokenizer file") from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        self._hf: Any = None
        if data.lstrip()[:1] == b"{":  # a Hugging Face tokenizer.json
            self._load_hf(data)
            return
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load_from_serialized_proto(data)
        except (RuntimeError, OSError) as err:
            raise TokenizerError(f"{path}: not a sentencepiece model ({err})") from err
        self.vocab_size = self._sp.get_piece_size()
        eod = self._sp.piece_to_id(EOD_PIECE)
        if self._sp.id_to_piece(eod) != EOD_PIECE:
            raise TokenizerError(f"{path}: has no {EOD_PIECE} control symbol; train with control_symbols=[{EOD_PIECE}]")
        self.eod_id = eod

    def _load_hf(self, data: bytes) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise TokenizerError(
                f"{self.path}: a Hugging Face tokenizer.json needs the `tokenizers` package: "
                "pip install 'pilestore[hf]'"
            ) from None
        try:
            self._hf = HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception on bad files
            raise TokenizerError(f"{self.path}: not a Hugging Face tokenizer.json ({err})") from err
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        for piece in HF_EOD_PIECES:
            eod = self._hf.token_to_id(piece)
            if eod is not None:
                self.eod_id = eod
                break
        else:
            raise TokenizerError(f"{self.path}: no end-of-document token (looked for {', '.join(HF_EOD_PIECES)})")
        self.chunk_chars = 0  # encoded whole: its pre-tokenizer may not split at whitespace

    def _encode_hf(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hugging Face encodings: character offsets turned into byte ends, as for sentencepiece."""
        from .pieces import fix_ends

        clean = [for_tokenizer(t) for t in texts]
        encodings = self._hf.encode_batch(clean, add_special_tokens=False)
        ids, ends, counts, sizes = [], [], [], []
        for text, enc in zip(clean, encodings, strict=True):
            char_ends = np.fromiter((end for _, end in enc.offsets), dtype=np.int64, count=len(enc.offsets))
            if not text.isascii():
                widths = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
                widths = 1 + (widths >= 0x80) + (widths >= 0x800) + (widths >= 0x10000)
                char_ends = np.concatenate(([0], np.cumsum(widths, dtype=np.int64)))[char_ends]
            ids.append(np.asarray(enc.ids, dtype=np.int64))
            ends.append(char_ends)
            counts.append(len(enc.ids))
            sizes.append(len(text.encode("utf-8")))
        flat_ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
        count_array = np.asarray(counts, dtype=np.int64)
        fix_ends(flat_ends, count_array, np.asarray(sizes, dtype=np.int64))
        return (np.concatenate(ids) if ids else np.zeros(0, np.int64)), flat_ends, count_array

    @functools.cached_property
    def chunk_chars(self) -> int:
        """Texts longer than this are cut at whitespace before encoding (0: never). Worked out at the first
        encode, not at load: reading samples (`pilestore sample --view`) decodes only and imports no numba."""
        return CHUNK_CHARS if self._cuts_safely() else 0

    def _cuts_safely(self) -> bool:
        """Whether this model tokenizes text cut at whitespace as it does the whole (true unless it was trained
        with split_by_whitespace=false): a probe decides, so no model can silently change its tokens."""
        probe = "Cut  here,\n\tand there: x=1; y = [2,  3]  # done.\n" * 8 + " tail  "
        return all(
            np.array_equal(a, b) for a, b in zip(self._encode(probe, 10**9), self._encode(probe, 16), strict=True)
        )

    def _encode(self, text: str, chunk_chars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.encode_batch([text], chunk_chars=chunk_chars)

    def encode_batch(
        self, texts: Sequence[str], threads: int = 1, chunk_chars: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, byte_ends, tokens per text) of a batch, flat: byte_ends[j] = UTF-8 offset where token j ends
        in its text. sentencepiece spreads the batch over `threads` threads; texts over `chunk_chars` are cut at
        whitespace first (sentencepiece splits words at whitespace, so the ids and offsets are the same as for
        the whole text: a test checks it on every long document of the sample corpus)."""
        from .pieces import decode_batch  # numba: only the tokenizing commands pay for it

        if self._hf is not None:
            return self._encode_hf(texts)
        if chunk_chars is None:
            chunk_chars = self.chunk_chars or 10**18
        pieces: list[str] = []
        owner: list[int] = []
        base: list[int] = []
        last_end: list[int] = []  # the text's byte length on its final piece, -1 on the others
        for doc, text in enumerate(texts):
            clean = for_tokenizer(text)
            offset = 0
            for part, final in _cut(clean, chunk_chars):
                size = len(part.encode("utf-8"))
                pieces.append(part)
                owner.append(doc)
                base.append(offset)
                last_end.append(size if final else -1)
                offset += size
        protos = self._sp.encode(pieces, return_type="serialized_proto", num_threads=threads)
        ids, ends, piece_counts = decode_batch(protos, np.asarray(last_end, dtype=np.int64))
        ends += np.repeat(np.asarray(base, dtype=np.int64), piece_counts)
        counts = np.bincount(np.asarray(owner, dtype=np.int64), weights=piece_counts, minlength=len(texts))
        return ids, ends, counts.astype(np.int64)

    def encode(self, texts: Sequence[str], threads: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, byte_ends) per text (see encode_batch)."""
        ids, ends, counts = self.encode_batch(texts, threads)
        bounds = np.concatenate(([0], np.cumsum(counts)))
        return [(ids[a:b], ends[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def decode(self, ids: Sequence[int]) -> str:
        if self._hf is not None:
            return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)
        return self._sp.decode([int(i) for i in ids])


def _cut(text: str, size: int) -> Iterator[tuple[str, bool]]:
    """(piece, is_last) with pieces of at most ~size characters, cut before a newline or a space."""
    start = 0
    while len(text) - start > size:
        cut = text.rfind("\n", start + size // 2, start + size)
        if cut < 0:
            cut = text.rfind(" ", start + size // 2, start + size)
        if cut < 0:  # no whitespace to cut at: keep the text whole rather than change its tokens
            break
        yield text[start:cut], False
        start = cut
    yield text[start:], True
