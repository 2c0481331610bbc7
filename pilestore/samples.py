"""Sample indexes on disk, and reading a sample back as model inputs.

    tokens/<view>/samples/<kind>-L<seq_len>-C<context>[-<packing>].{spans,samples}.arrow + .json (written last)

spans:   doc int64, eod uint8, start int64, context int32, target int32, n_bytes int64 (document order),
         by_sample int64 (a permutation: the spans in sample order)
samples: span_begin int64 (into by_sample), n_spans int32, n_tokens int32 (x-tokens used of seq_len + 1),
         n_bytes int64

n_bytes of a span: the UTF-8 bytes of the original text its target tokens cover, exactly: the tokenized view
stores where each token ends in its document's text (tokenizer.py), so bytes(targets j..k) =
end[k] - end[j - 1] (end[-1] = 0). Summed over all spans of a view, that is every byte of every document
that has tokens: bits per byte = sum(loss in nats) / ln(2) / sum(n_bytes).

This module reads indexes (numpy and pyarrow only); windows.py builds them with numba.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PilestoreError
from .manifest import write_atomic
from .tokens import TokenView

IGNORE = -100  # label of a position that is not predicted (PyTorch cross_entropy's ignore_index)
SAMPLES_DIR = "samples"


def index_name(kind: str, seq_len: int, context: int, packing: str | None) -> str:
    return f"{kind}-L{seq_len}-C{context}" + (f"-{packing}" if kind == "train" else "")


def span_bytes(
    view: TokenView, doc: np.ndarray, start: np.ndarray, context: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """Exact UTF-8 bytes covered by each span's target tokens (see the module docstring)."""
    out = np.zeros(len(doc), dtype=np.int64)
    first_doc = 0
    for p in range(view.num_partitions):
        part = view.partition(p)
        n = len(part.n_tokens)
        mask = (doc >= first_doc) & (doc < first_doc + n) & (target > 0)
        local = doc[mask] - first_doc
        first = part.start[local] + start[mask] + context[mask]  # first target token in the partition file
        last = first + target[mask] - 1
        before = np.where(start[mask] + context[mask] > 0, part.byte_ends[np.maximum(first - 1, 0)], 0)
        out[mask] = part.byte_ends[last].astype(np.int64) - before.astype(np.int64)
        first_doc += n
    return out


def write_index(
    view: TokenView, kind: str, seq_len: int, context: int, packing: str | None, spans: Any
) -> dict[str, Any]:
    """Write a Spans (windows.py) with byte counts as the named index; returns its description."""
    import pyarrow as pa

    folder = view.folder / SAMPLES_DIR
    folder.mkdir(exist_ok=True)
    name = index_name(kind, seq_len, context, packing)
    n_bytes = span_bytes(view, spans.doc, spans.start, spans.context, spans.target)
    begin = spans.span_begin
    n_spans = np.diff(begin).astype(np.int32)
    by_sample = spans.order()
    sample_bytes = np.add.reduceat(n_bytes[by_sample], begin[:-1]) if len(n_bytes) else np.zeros(0, np.int64)
    sample_tokens = spans.sample_tokens().astype(np.int32)
    tables = {
        "spans": pa.table(
            {
                "doc": spans.doc,
                "eod": spans.eod,
                "start": spans.start,
                "context": spans.context,
                "target": spans.target,
                "n_bytes": n_bytes,
                "by_sample": by_sample,
            }
        ),
        "samples": pa.table(
            {"span_begin": begin[:-1], "n_spans": n_spans, "n_tokens": sample_tokens, "n_bytes": sample_bytes}
        ),
    }
    for part, table in tables.items():
        path = folder / f"{name}.{part}.arrow"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            with pa.ipc.new_file(fh, table.schema) as writer:
                writer.write_table(table)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    slots = spans.num_samples * (seq_len + 1)
    info = {
        "name": name,
        "kind": kind,
        "seq_len": seq_len,
        "context": context,
        "packing": packing,
        "samples": spans.num_samples,
        "spans": len(spans.doc),
        "target_tokens": int(spans.target.sum()),
        "bytes": int(n_bytes.sum()),
        "padding_fraction": round(1 - sample_tokens.sum() / slots, 6) if slots else 0,
        "documents_in_several_windows": int((np.bincount(spans.doc) > 1).sum()) if len(spans.doc) else 0,
    }
    write_atomic(folder / f"{name}.json", json.dumps(info, indent=1).encode())
    return info


@dataclass(frozen=True, slots=True)
class Sample:
    """Sample i as a model sees it: x = seq_len + 1 tokens; input_ids = x[:-1]; labels[j] predicts x[j + 1]."""

    input_ids: np.ndarray
    labels: np.ndarray  # IGNORE where x[j + 1] is context, [eod] or padding
    position_ids: np.ndarray  # restart at 0 with every span
    doc_lengths: np.ndarray  # x-tokens per span, then padding (for cu_seqlens-style masking)
    spans: list[dict[str, int]]
    n_bytes: int


class SampleIndex:
    """An index written by write_index, memory-mapped."""

    def __init__(self, view: TokenView, name: str) -> None:
        import pyarrow as pa

        self.view = view
        folder = view.folder / SAMPLES_DIR
        try:
            self.info = json.loads((folder / f"{name}.json").read_text())
        except FileNotFoundError:
            raise PilestoreError(f"{folder / name}: no such sample index; build it with `pilestore index`") from None
        self.spans = {k: v.to_numpy() for k, v in zip(*_columns(pa, folder / f"{name}.spans.arrow"), strict=True)}
        self.samples = {k: v.to_numpy() for k, v in zip(*_columns(pa, folder / f"{name}.samples.arrow"), strict=True)}
        self.seq_len = int(self.info["seq_len"])
        self._doc_first: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.samples["span_begin"])

    def _locate(self, doc: int) -> tuple[int, int]:
        if self._doc_first is None:
            counts = [len(self.view.partition(p).n_tokens) for p in range(self.view.num_partitions)]
            self._doc_first = np.concatenate(([0], np.cumsum(counts)))
        p = int(np.searchsorted(self._doc_first, doc, side="right") - 1)
        return p, doc - int(self._doc_first[p])

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i %= len(self)
        first = int(self.samples["span_begin"][i])
        count = int(self.samples["n_spans"][i])
        size = self.seq_len + 1
        x = np.zeros(size, dtype=np.int64)  # padding id 0 ([PAD] in the Pile configuration)
        is_target = np.zeros(size, dtype=bool)
        positions = np.zeros(size, dtype=np.int64)
        lengths, spans = [], []
        at = 0
        for k in self.spans["by_sample"][first : first + count]:
            doc = int(self.spans["doc"][k])
            eod, start = int(self.spans["eod"][k]), int(self.spans["start"][k])
            context, target = int(self.spans["context"][k]), int(self.spans["target"][k])
            p, local = self._locate(doc)
            part = self.view.partition(p)
            offset = int(part.start[local]) + start
            tokens = part.tokens[offset : offset + context + target]
            n = eod + context + target
            if eod:
                x[at] = self.view.eod_id
            x[at + eod : at + n] = tokens
            is_target[at + n - target : at + n] = True
            positions[at : at + n] = np.arange(n)
            lengths.append(n)
            spans.append(
                {
                    "doc": doc,
                    "eod": eod,
                    "start": start,
                    "context": context,
                    "target": target,
                    "n_bytes": int(self.spans["n_bytes"][k]),
                }
            )
            at += n
        if at < size:
            lengths.append(size - at)
        labels = np.where(is_target[1:], x[1:], IGNORE)
        return Sample(
            x[:-1], labels, positions[:-1], np.asarray(lengths, np.int64), spans, int(self.samples["n_bytes"][i])
        )


def _columns(pa: Any, path: Path) -> tuple[list[str], list[Any]]:
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    return table.column_names, [table.column(n).combine_chunks() for n in table.column_names]
