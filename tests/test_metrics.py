"""Bits per byte per subset: span losses against a per-token reference, and whole-view totals, over real ranks."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pilestore
from pilestore.metrics import SubsetMetrics, bits_per_byte, perplexity
from pilestore.tokens import TokenView, subset_stats, tokenize
from pilestore.torch import PileDataset, collate, eval_loaders, evaluate, span_losses

SHAPE: dict = {"seq_len": 128, "context": 32}  # and "tokenizer": the model, set by the store fixture
SUBSET = "Wikipedia (en)"  # a small subset of the sample corpus, to keep two ranks on two cores quick


@pytest.fixture(scope="module")
def store(small_store: Path, model: Path) -> pilestore.Store:
    from pilestore.indexes import build_indexes

    SHAPE["tokenizer"] = model  # other test modules may add views with other tokenizers to this store
    result = tokenize(pilestore.open(small_store), model)
    build_indexes(TokenView(Path(result["view"])), pilestore.open(small_store), 128, 32, "bestfit")
    return pilestore.open(small_store)


def test_formulas() -> None:
    assert bits_per_byte(math.log(2) * 10, 10) == pytest.approx(1.0)
    assert perplexity(0.0, 5) == 1.0 and math.isnan(bits_per_byte(1.0, 0))
    m = SubsetMetrics(["a", "b"])
    m.add([0, 1, 1], [1.0, 2.0, 3.0], [1, 2, 3], [4, 5, 6])
    report = m.report()
    assert report["b"]["tokens"] == 5 and report["all"]["bytes"] == 15
    assert report["b"]["bits_per_byte"] == pytest.approx(5.0 / (math.log(2) * 11))
    with pytest.raises(ValueError, match="subset ids"):
        m.add([2], [1.0], [1], [1])


def test_span_losses_match_a_per_token_reference(store: pilestore.Store) -> None:
    ds = PileDataset(store, "train", **SHAPE)
    batch = collate([ds[i] for i in range(8)])
    logits = torch.randn(8, 128, 50, generator=torch.Generator().manual_seed(0))
    batch["labels"] = torch.where(batch["labels"] >= 0, batch["labels"] % 50, batch["labels"])  # a 50-token model
    got = span_losses(logits, batch)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    span = 0
    for b in range(8):
        at = 0  # x-position where the span begins; labels[j] predicts x[j + 1]
        n_spans = int(batch["subset_offsets"][b + 1] - batch["subset_offsets"][b])
        lengths = batch["doc_lengths"][batch["doc_lengths_offsets"][b] : batch["doc_lengths_offsets"][b + 1]]
        for k in range(n_spans):
            n = int(lengths[k])
            loss, tokens = 0.0, 0
            for x in range(max(at, 1), at + n):
                label = int(batch["labels"][b, x - 1])
                if label != -100:
                    loss -= float(log_probs[b, x - 1, label])
                    tokens += 1
            assert int(got["tokens"][span]) == tokens and float(got["loss"][span]) == pytest.approx(loss, rel=1e-6)
            at += n
            span += 1
    assert span == len(got["loss"])
    assert int(got["tokens"].sum()) == int((batch["labels"] != -100).sum())


def uniform(vocab: int):  # a model that knows nothing: every token costs ln(vocab) nats
    return lambda batch: torch.zeros(*batch["input_ids"].shape, vocab)


def test_a_uniform_model_scores_log2_vocab_times_tokens_per_byte(store: pilestore.Store, model: Path) -> None:
    chosen = ["StackExchange", "Wikipedia (en)"]  # two small subsets keep the test quick
    loaders = eval_loaders(store, batch_size=16, subsets=chosen, **SHAPE)
    names = PileDataset(store, "eval", **SHAPE).subsets
    report = evaluate(uniform(2000), loaders.values(), names)
    stats = subset_stats(store, TokenView(PileDataset(store, "eval", **SHAPE)._view.folder))
    assert set(report) == {*chosen, "all"}
    for name in chosen:
        row = stats[name]
        assert report[name]["tokens"] == row["tokens"] and report[name]["bytes"] == row["bytes"]
        assert report[name]["bits_per_byte"] == pytest.approx(row["tokens"] / row["bytes"] * math.log2(2000))
    assert report["all"]["perplexity"] == pytest.approx(2000)


def _rank_main(rank: int, world: int, init_file: str, store_dir: str, shape: dict, queue: mp.Queue) -> None:
    SHAPE.update(shape)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        store = pilestore.open(store_dir)
        loaders = eval_loaders(store, batch_size=8, subsets=[SUBSET], **SHAPE)  # rank and world from dist
        report = evaluate(uniform(2000), loaders.values(), PileDataset(store, "eval", **SHAPE).subsets)
        queue.put((rank, report))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_evaluate_the_same_totals_as_one_process(store: pilestore.Store) -> None:
    alone = evaluate(
        uniform(2000), eval_loaders(store, batch_size=8, subsets=[SUBSET], **SHAPE).values(), store_subsets(store)
    )
    assert list(alone) == [SUBSET, "all"] and alone["all"]["tokens"] > 1000
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_rank_main, args=(r, 2, init, str(store.path), SHAPE, queue)) for r in range(2)]
        for p in procs:
            p.start()
        reports = dict(queue.get(timeout=180) for _ in procs)
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    for report in reports.values():
        assert {k: v["tokens"] for k, v in report.items()} == {k: v["tokens"] for k, v in alone.items()}
        assert {k: v["bytes"] for k, v in report.items()} == {k: v["bytes"] for k, v in alone.items()}
        assert np.isclose(report["all"]["bits_per_byte"], alone["all"]["bits_per_byte"], rtol=1e-12)


def store_subsets(store: pilestore.Store) -> list[str]:
    return PileDataset(store, "eval", **SHAPE).subsets
