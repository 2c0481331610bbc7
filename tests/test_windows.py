"""Sample views against a plain-Python reference of lm-evaluation-harness's rolling windows, and invariants."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pilestore.windows as W
from pilestore.windows import Spans, eval_view, train_view, windows

EOD = -1


def reference_rolling_windows(tokens: list[int], prefix: int, max_seq_len: int, context_len: int):
    """lm-evaluation-harness utils.get_rolling_token_windows, restated from its documented behaviour."""
    assert 1 <= context_len <= max_seq_len
    if not tokens:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first = min(max_seq_len, len(tokens))
    yield [prefix] + tokens[: first - 1], tokens[:first]
    predicted += first
    while predicted < len(tokens):
        window_pred_len = min(len(tokens) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield tokens[window_end - max_seq_len - 1 : window_end - 1], tokens[window_end - window_pred_len : window_end]
        predicted += window_pred_len


def make_disjoint(window: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness utils.make_disjoint_window: (context, continuation) without overlap."""
    a, b = window
    return a[: len(a) - (len(b) - 1)], b


def materialize(spans: Spans, docs: list[list[int]], i: int) -> list[tuple[list[int], list[int], int]]:
    """(context tokens, target tokens, doc) per span of sample i; [eod] counts as context."""
    out = []
    order = spans.order()
    for k in order[spans.span_begin[i] : spans.span_begin[i + 1]]:
        d, s, c, t = int(spans.doc[k]), int(spans.start[k]), int(spans.context[k]), int(spans.target[k])
        prefix = [EOD] if spans.eod[k] else []
        out.append((prefix + docs[d][s : s + c], docs[d][s + c : s + c + t], d))
    return out


def random_docs(lengths: list[int]) -> list[list[int]]:
    rng = np.random.default_rng(len(lengths))
    return [rng.integers(0, 50_000, n).tolist() for n in lengths]


shapes = st.integers(1, 64).flatmap(lambda L: st.tuples(st.just(L), st.integers(1, L)))
doc_lengths = st.lists(st.integers(0, 300), max_size=25)


@settings(deadline=None, max_examples=200)
@given(doc_lengths, shapes)
def test_eval_view_equals_the_reference_rolling_windows(lengths: list[int], shape: tuple[int, int]) -> None:
    seq_len, context = shape
    docs = random_docs(lengths)
    spans = eval_view(np.array(lengths, dtype=np.int64), seq_len, context)
    ours = [materialize(spans, docs, i)[0] for i in range(spans.num_samples)]
    expected = [
        (ctx, tgt, d)
        for d, tokens in enumerate(docs)
        for ctx, tgt in map(make_disjoint, reference_rolling_windows(tokens, EOD, seq_len, context))
    ]
    assert ours == expected
    assert all(len(c) + len(t) <= seq_len + 1 for c, t, _ in ours)


def check_invariants(spans: Spans, lengths: list[int], seq_len: int, context: int) -> None:
    docs = [list(range(n)) for n in lengths]  # token j of a document is j: positions are visible
    seen = [np.zeros(n, dtype=np.int64) for n in lengths]
    for i in range(spans.num_samples):
        used = 0
        for ctx, tgt, d in materialize(spans, docs, i):
            used += len(ctx) + len(tgt)
            for j in tgt:
                seen[d][j] += 1
            doc_ctx = [x for x in ctx if x != EOD]
            if tgt:  # context comes from the same document and immediately precedes the targets
                assert doc_ctx == list(range(tgt[0] - len(doc_ctx), tgt[0]))
                assert tgt == list(range(tgt[0], tgt[0] + len(tgt)))
                assert doc_ctx or ctx == [EOD] and tgt[0] == 0  # nothing is predicted from nothing
                assert len(doc_ctx) <= max(context, seq_len) and len(doc_ctx) + len(tgt) <= seq_len + 1
        assert 0 < used <= seq_len + 1
    for counts in seen:
        assert (counts == 1).all()  # every token of every document is a target exactly once


@settings(deadline=None, max_examples=200)
@given(doc_lengths, shapes, st.sampled_from(["bestfit", "greedy"]))
def test_train_view_predicts_every_token_once_with_its_context(
    lengths: list[int], shape: tuple[int, int], packing: str
) -> None:
    seq_len, context = shape
    spans = train_view(np.array(lengths, dtype=np.int64), seq_len, context, packing)
    check_invariants(spans, lengths, seq_len, context)


@settings(deadline=None, max_examples=100)
@given(doc_lengths, shapes)
def test_eval_view_predicts_every_token_once(lengths: list[int], shape: tuple[int, int]) -> None:
    check_invariants(eval_view(np.array(lengths, dtype=np.int64), *shape), lengths, *shape)


def test_long_documents_carry_exactly_the_context_in_training() -> None:
    spans = train_view(np.array([10]), 4, 2, "greedy")
    assert [(int(s), int(c), int(t)) for s, c, t in zip(spans.start, spans.context, spans.target, strict=True)] == [
        (0, 0, 4),
        (2, 2, 3),
        (5, 2, 3),
    ]


def reference_best_fit_loads(sizes: list[int], capacity: int) -> list[int]:
    """Best-fit decreasing, plainly: each piece, largest first, into the fullest bin it fits; the bins' loads."""
    loads: list[int] = []
    for size in sorted(sizes, reverse=True):
        fits = [b for b, load in enumerate(loads) if load + size <= capacity]
        if fits:
            loads[max(fits, key=lambda b: loads[b])] += size
        else:
            loads.append(size)
    return sorted(loads)


@settings(deadline=None, max_examples=150)
@given(doc_lengths, shapes)
def test_best_fit_fills_samples_as_best_fit_decreasing_does(lengths: list[int], shape: tuple[int, int]) -> None:
    """Which of several equally full bins a piece goes to does not change the loads, so they must match exactly
    (first fit or next fit would not)."""
    seq_len, context = shape
    pieces = windows(np.array(lengths, dtype=np.int64), seq_len, context, tails_keep_context=True)  # unpacked
    sizes = (pieces.eod.astype(np.int64) + pieces.context + pieces.target).tolist()
    packed = train_view(np.array(lengths, dtype=np.int64), seq_len, context, "bestfit")
    assert sorted(packed.sample_tokens().tolist()) == reference_best_fit_loads(sizes, seq_len + 1)


def test_best_fit_wastes_no_more_than_greedy_on_real_shaped_lengths() -> None:
    lengths = np.random.default_rng(0).lognormal(5, 1.5, 5000).astype(np.int64)
    padding = {}
    for packing in ("bestfit", "greedy"):
        spans = train_view(lengths, 2048, 512, packing)
        padding[packing] = int(spans.num_samples * 2049 - spans.sample_tokens().sum())
    assert padding["bestfit"] < padding["greedy"]


@contextlib.contextmanager
def parallel_from(docs: int):
    """Split documents between numba's threads from `docs` documents on (the default: PARALLEL_DOCS)."""
    saved = W.PARALLEL_DOCS
    W.PARALLEL_DOCS = docs
    try:
        yield
    finally:
        W.PARALLEL_DOCS = saved


@settings(deadline=None, max_examples=100)
@given(doc_lengths, shapes, st.booleans())
def test_windows_split_between_threads_equal_those_of_one_thread(
    lengths: list[int], shape: tuple[int, int], tails: bool
) -> None:
    n = np.array(lengths, dtype=np.int64)
    with parallel_from(1 << 62):
        one = windows(n, *shape, tails_keep_context=tails)
    with parallel_from(0):
        split = windows(n, *shape, tails_keep_context=tails)
    for name in ("doc", "eod", "start", "context", "target", "span_begin"):
        assert np.array_equal(getattr(one, name), getattr(split, name)), name


def test_a_large_view_built_on_threads_equals_the_one_thread_build() -> None:
    lengths = np.random.default_rng(2).lognormal(6.5, 1.6, W.PARALLEL_DOCS + 1000).astype(np.int64)
    with parallel_from(1 << 62):
        one = train_view(lengths, 2048, 512)
    split = train_view(lengths, 2048, 512)  # the default: this many documents are split between threads
    for name in ("doc", "eod", "start", "context", "target", "span_begin", "by_sample"):
        assert np.array_equal(getattr(one, name), getattr(split, name)), name


def test_views_are_deterministic() -> None:
    lengths = np.random.default_rng(1).integers(0, 5000, 2000)
    a, b = train_view(lengths, 1024, 128), train_view(lengths.copy(), 1024, 128)
    for name in ("doc", "eod", "start", "context", "target", "span_begin", "by_sample"):
        assert np.array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize(("seq_len", "context"), [(4, 0), (4, 5)])
def test_bad_shapes_are_refused(seq_len: int, context: int) -> None:
    with pytest.raises(ValueError, match="context"):
        eval_view(np.array([3]), seq_len, context)


def test_unknown_packing_is_refused() -> None:
    with pytest.raises(ValueError, match="packing"):
        train_view(np.array([3]), 4, 2, "firstfit")


@pytest.mark.parametrize("packing", ["bestfit", "greedy"])
def test_positions_past_int32_are_exact(packing: str) -> None:
    """Kernels write int32 positions while they fit; a document of 2**31 tokens or more gets int64 starts."""
    seq_len, context = 1 << 20, 1 << 18
    lengths = np.array([5, (1 << 31) + 7, 3], dtype=np.int64)
    for spans in (eval_view(lengths, seq_len, context), train_view(lengths, seq_len, context, packing)):
        assert spans.start.dtype == np.int64 and spans.doc.dtype == np.int32
        big = spans.doc == 1
        ends = spans.start[big].astype(np.int64) + spans.context[big] + spans.target[big]
        assert ends.max() == lengths[1]  # the last target is the document's last token: nothing wrapped
        assert int(spans.target[big].sum()) == lengths[1]  # every token a target exactly once
        assert sorted(ends.tolist()) == sorted(set(ends.tolist()))
    small = eval_view(np.array([5, 9], dtype=np.int64), 4, 2)
    assert small.start.dtype == np.int32 and small.doc.dtype == np.int32
