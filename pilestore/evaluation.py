"""Validation on the torch side: per-span losses of a batch, per-subset loaders, bits per byte over ranks.

    loaders = eval_loaders(store, val_fraction=0.01, seq_len=2048, context=512, batch_size=8)
    report = evaluate(lambda batch: model(batch["input_ids"]), loaders.values(), names, device="cuda")
    report["Wikipedia (en)"]["bits_per_byte"]

Every target token's loss is attributed to its span's subset, so packed train samples work too; the eval view
(one document per sample, lm-evaluation-harness's rolling windows) gives numbers comparable with published
Pile evaluations. Under torch.distributed each rank evaluates its own samples (no padding, no duplicates) and
the sums are all-reduced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .metrics import SubsetMetrics
from .samples import IGNORE


def span_losses(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per span of a collated batch: subset id, summed loss in nats, target tokens and target bytes."""
    labels = batch["labels"].to(logits.device)
    b, t = labels.shape
    token_loss = F.cross_entropy(
        logits.reshape(b * t, -1).float(), labels.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(b, t)
    lengths, offsets = batch["doc_lengths"].to(logits.device), batch["doc_lengths_offsets"].to(logits.device)
    span_offsets = batch["subset_offsets"].to(logits.device)
    entries = len(lengths)
    sample_of = torch.repeat_interleave(torch.arange(b, device=logits.device), offsets.diff())
    k = torch.arange(entries, device=logits.device) - offsets[sample_of]
    is_span = k < span_offsets.diff()[sample_of]  # the last entry of a sample may be its padding
    span_of_entry = torch.where(is_span, span_offsets[sample_of] + k, -1)
    x_span = torch.repeat_interleave(span_of_entry, lengths).view(b, t + 1)[:, 1:]  # labels[j] is x[j + 1]
    counted = (labels != IGNORE) & (x_span >= 0)
    n_spans = len(batch["subset"])
    index = torch.where(counted, x_span, 0).reshape(-1)
    loss = torch.zeros(n_spans, dtype=torch.float64, device=logits.device)
    loss.index_add_(0, index, torch.where(counted, token_loss, 0).reshape(-1).double())
    tokens = torch.zeros(n_spans, dtype=torch.int64, device=logits.device)
    tokens.index_add_(0, index, counted.reshape(-1).long())
    return {"subset": batch["subset"], "loss": loss, "tokens": tokens, "bytes": batch["span_bytes"]}


def reduce_metrics(metrics: SubsetMetrics, device: torch.device | str = "cpu") -> SubsetMetrics:
    """Sum the metrics of every rank (a no-op without torch.distributed); returns them for chaining."""
    if dist.is_available() and dist.is_initialized():
        summed = torch.from_numpy(metrics.to_array()).to(device)
        dist.all_reduce(summed)
        metrics.load_array(summed.cpu().numpy())
    return metrics


@torch.no_grad()
def evaluate(
    logits_of: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
    batches: Iterable[Iterable[Mapping[str, torch.Tensor]]],
    subsets: Sequence[str],
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
) -> dict[str, dict[str, float]]:
    """Bits per byte and perplexity per subset over loaders of collated batches, summed over ranks."""
    metrics = SubsetMetrics(subsets)
    for loader in batches:
        for n, batch in enumerate(loader):
            if max_batches is not None and n >= max_batches:
                break
            on_device = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            spans = span_losses(logits_of(on_device), on_device)
            metrics.add(*(spans[k].cpu().numpy() for k in ("subset", "loss", "tokens", "bytes")))
    return reduce_metrics(metrics, device).report()


def eval_loaders(
    store: Any,
    *,
    split: str = "all",
    val_fraction: float | None = None,
    subsets: Sequence[str] | None = None,
    seq_len: int = 2048,
    context: int = 512,
    tokenizer: Any = None,
    batch_size: int = 8,
    num_workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    **loader_options: Any,
) -> dict[str, DataLoader]:
    """One DataLoader per subset over the eval view (of split "val" when val_fraction is given), each rank
    reading samples rank, rank + W, ... of it. For the Pile's val/test files, ingest them as their own store."""
    from .torch import PileDataset, collate

    if val_fraction is not None and split == "all":
        split = "val"
    if world_size is None:
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    shape = {"seq_len": seq_len, "context": context, "tokenizer": tokenizer}
    whole = PileDataset(store, "eval", split=split, val_fraction=val_fraction, **shape)
    loaders = {}
    for k, name in enumerate(whole.subsets):
        if (subsets is not None and name not in subsets) or whole.index.subset_samples[k] == 0:
            continue
        ds = PileDataset(store, "eval", split=split, val_fraction=val_fraction, subsets=[name], **shape)
        loaders[name] = DataLoader(
            ds,
            batch_size=batch_size,
            sampler=range(rank, len(ds), world_size),
            num_workers=num_workers,
            collate_fn=collate,
            **loader_options,
        )
    return loaders


__all__ = ["eval_loaders", "evaluate", "reduce_metrics", "span_losses"]
