"""Tokenizers: train a sentencepiece model on a store, load one, encode documents with exact byte offsets.

    store --uniform random sample of documents (seeded)--> sentences --> SentencePieceTrainer (streamed,
    no temp file) --> tok.model

Encoding returns, per document, the token ids and for each token the UTF-8 byte offset where it ends in the
*original* text: sentencepiece's offset_mapping gives character spans that partition the text (whitespace the
normalizer removes is counted with the next token), which are turned into byte ends. So the bytes of any run
of tokens are exact, and a document's tokens cover exactly its UTF-8 bytes (for bits per byte).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PilestoreError

EOD_PIECE = "[eod]"
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


def iter_sentences(store: Any, indices: np.ndarray, max_chars: int) -> Iterator[str]:
    """Non-empty lines of the sampled documents, cut to max_chars."""
    for i in indices:
        for line in for_tokenizer(store[int(i)].text).split("\n"):
            if line.strip():
                yield line[:max_chars]


def train_tokenizer(store: Any, out: Path, settings: TrainSettings) -> dict[str, Any]:
    """Train sentencepiece on a sample of `store` and write the model to `out`; returns what was done."""
    import sentencepiece as spm

    indices = sample_indices(store, settings)
    options = {**PILE_DEFAULTS, **settings.options}
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter_sentences(store, indices, settings.max_sentence_chars),
            model_writer=model,
            minloglevel=2,
            **options,
        )
    except RuntimeError as err:
        raise TokenizerError(f"sentencepiece training failed: {err}") from err
    out.write_bytes(model.getvalue())
    return {
        "model": str(out),
        "sha256": hashlib.sha256(model.getvalue()).hexdigest(),
        "documents": len(indices),
        "options": options,
    }


class Tokenizer:
    """A loaded tokenizer: `encode(texts)` -> per text (ids, byte ends); `eod_id`, `vocab_size`, `sha256`."""

    def __init__(self, path: Path) -> None:
        import sentencepiece as spm

        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise TokenizerError(f"{path}: no such tokenizer file") from None
        self.sha256 = hashlib.sha256(data).hexdigest()
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

    def encode(self, texts: Sequence[str], threads: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids int64, byte_end int64) per text: byte_end[j] = UTF-8 offset where token j ends in the text."""
        clean = [for_tokenizer(t) for t in texts]
        results = self._sp.encode(clean, return_type="offset_mapping", num_threads=threads)
        return [_with_byte_ends(text, r["ids"], r["offsets"]) for text, r in zip(clean, results, strict=True)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token: int) -> str:
        return self._sp.id_to_piece(int(token))


def _with_byte_ends(text: str, ids: list[int], offsets: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    token_ids = np.asarray(ids, dtype=np.int64)
    if not ids:
        return token_ids, np.zeros(0, dtype=np.int64)
    char_ends = np.fromiter((end for _, end in offsets), dtype=np.int64, count=len(offsets))
    if text.isascii():
        byte_ends = char_ends
    else:  # UTF-8 length of each character, summed: byte offset after character k
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        widths = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000)
        byte_after = np.concatenate(([0], np.cumsum(widths, dtype=np.int64)))
        byte_ends = byte_after[char_ends]
    byte_ends = np.maximum.accumulate(byte_ends)  # ends never go back, whatever the normalizer did
    byte_ends[-1] = len(text.encode("utf-8", "surrogatepass"))  # the last token takes any trailing bytes
    return token_ids, byte_ends
