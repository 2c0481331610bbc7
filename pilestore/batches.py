"""The numba kernel that lays a batch's spans out as model inputs (SampleIndex.gather; torch side only).

Kept apart from samples.py, which `pilestore sample` imports and which must not import numba."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _fill(
    tokens, rows, at, eod, context, target, source, eod_id, ignore, input_ids, labels, positions
):  # pragma: no cover
    width = input_ids.shape[1]
    for k in range(len(rows)):
        r, a, e = rows[k], at[k], eod[k]
        n = e + context[k] + target[k]
        first_target = a + n - target[k]
        src = source[k] - e  # x[a + j] = tokens[src + j] for j >= e
        stop = min(n, width - a)  # the sample's last x-token is a label only
        if e and stop > 0:
            input_ids[r, a] = eod_id
        for j in range(e, stop):
            input_ids[r, a + j] = tokens[src + j]
        for j in range(stop):
            positions[r, a + j] = j
        for q in range(max(a, 1), first_target):
            labels[r, q - 1] = ignore
        for q in range(max(first_target, 1), a + n):
            labels[r, q - 1] = tokens[src + q - a]


@numba.njit(cache=True, nogil=True)
def _pad(used, ignore, input_ids, labels, positions):  # pragma: no cover
    width = input_ids.shape[1]
    for r in range(len(used)):
        for q in range(used[r], width + 1):
            if q < width:
                input_ids[r, q] = 0
                positions[r, q] = 0
            if q >= 1:
                labels[r, q - 1] = ignore


def fill_spans(
    tokens: np.ndarray,
    rows: np.ndarray,
    at: np.ndarray,
    eod: np.ndarray,
    context: np.ndarray,
    target: np.ndarray,
    source: np.ndarray,
    eod_id: int,
    ignore: int,
    out: dict[str, np.ndarray],
) -> None:
    """Write spans into out's input_ids, labels and position_ids ([B, seq_len]): span k is x-tokens
    [eod] * eod[k] + tokens[source[k] : source[k] + context[k] + target[k]] at slot at[k] of sample rows[k]; its
    last target[k] x-tokens are labels (labels[q - 1] = x[q]; `ignore` where x[q] is not a target); positions
    count from 0. The caller has checked that every source range lies in `tokens` and that the spans fit."""
    _fill(tokens, rows, at, eod, context, target, source, np.int64(eod_id), np.int64(ignore),
          out["input_ids"], out["labels"], out["position_ids"])  # fmt: skip


def fill_padding(used: np.ndarray, ignore: int, out: dict[str, np.ndarray]) -> None:
    """Slots from used[r] on in sample r: input id 0 ([PAD]), position 0, label `ignore`."""
    _pad(used, np.int64(ignore), out["input_ids"], out["labels"], out["position_ids"])
