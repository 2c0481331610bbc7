"""Bits per byte and perplexity per subset, from summed losses (pure numpy).

    bits per byte     bpb = sum(loss in nats over target tokens) / (ln 2 * sum(UTF-8 bytes of those tokens))
    token perplexity  exp(sum(loss) / target tokens)
    byte perplexity   exp(sum(loss) / bytes) = 2 ** bpb (lm-evaluation-harness's byte_perplexity)

Losses must be sums, not means: a mean per batch weights short and long documents wrongly. The bytes are
the exact bytes a view's target tokens cover (samples.py), so over the eval view of a split the byte total is
the split's whole text, and bpb compares across tokenizers (the Pile paper reports it per subset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LN2 = math.log(2.0)


def bits_per_byte(loss_nats: float, n_bytes: int) -> float:
    """Summed loss in nats over the bytes its targets cover, in bits per byte (nan when there are no bytes)."""
    return loss_nats / (LN2 * n_bytes) if n_bytes else math.nan


def perplexity(loss_nats: float, n_tokens: int) -> float:
    """Token perplexity from a summed loss in nats (nan when there are no tokens)."""
    return math.exp(loss_nats / n_tokens) if n_tokens else math.nan


@dataclass
class SubsetMetrics:
    """Summed loss, target tokens and target bytes per subset; merged across ranks as one float64 array."""

    names: Sequence[str]
    loss: np.ndarray = field(init=False)
    tokens: np.ndarray = field(init=False)
    bytes: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.names = list(self.names)
        self.loss = np.zeros(len(self.names), np.float64)
        self.tokens = np.zeros(len(self.names), np.int64)
        self.bytes = np.zeros(len(self.names), np.int64)

    def add(self, subset: Any, loss: Any, tokens: Any, n_bytes: Any) -> None:
        """Add per-span (or per-sample) sums: subset ids, loss in nats, target tokens, target bytes."""
        subset = np.asarray(subset, dtype=np.int64)
        if len(subset) and (subset.min() < 0 or subset.max() >= len(self.names)):
            raise ValueError(f"subset ids must be in [0, {len(self.names)}), got {subset.min()}..{subset.max()}")
        np.add.at(self.loss, subset, np.asarray(loss, dtype=np.float64))
        np.add.at(self.tokens, subset, np.asarray(tokens, dtype=np.int64))
        np.add.at(self.bytes, subset, np.asarray(n_bytes, dtype=np.int64))

    def to_array(self) -> np.ndarray:
        """[loss, tokens, bytes] x subsets as float64, for an all-reduce (exact for counts below 2**53)."""
        return np.stack([self.loss, self.tokens.astype(np.float64), self.bytes.astype(np.float64)])

    def load_array(self, summed: np.ndarray) -> None:
        self.loss = np.asarray(summed[0], np.float64).copy()
        self.tokens = np.rint(summed[1]).astype(np.int64)
        self.bytes = np.rint(summed[2]).astype(np.int64)

    def report(self) -> dict[str, dict[str, float]]:
        """Per subset with targets, and "all": loss per token, bits per byte, perplexities, tokens, bytes."""
        rows = {
            name: _row(float(self.loss[k]), int(self.tokens[k]), int(self.bytes[k]))
            for k, name in enumerate(self.names)
            if self.tokens[k]
        }
        rows["all"] = _row(float(self.loss.sum()), int(self.tokens.sum()), int(self.bytes.sum()))
        return rows


def _row(loss: float, tokens: int, n_bytes: int) -> dict[str, float]:
    return {
        "loss": loss / tokens if tokens else math.nan,
        "bits_per_byte": bits_per_byte(loss, n_bytes),
        "perplexity": perplexity(loss, tokens),
        "byte_perplexity": math.exp(loss / n_bytes) if n_bytes else math.nan,
        "tokens": tokens,
        "bytes": n_bytes,
    }
