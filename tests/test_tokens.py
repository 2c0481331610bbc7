"""Tokenizer training, tokenized views and sample indexes, on a real sentencepiece model trained here."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import pilestore
from pilestore.cli import cli
from pilestore.indexes import build_index
from pilestore.samples import IGNORE, IndexShape, SampleIndex
from pilestore.tokenizer import Tokenizer, TokenizerError, TrainSettings, sample_indices, train_tokenizer
from pilestore.tokens import TokenView, token_dtype, tokenize


@pytest.fixture(scope="module")
def view(small_store: Path, model: Path) -> TokenView:
    result = tokenize(pilestore.open(small_store), model, threads=2)
    return TokenView(Path(result["view"]))


def test_trained_model_has_the_pile_configuration(model: Path) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == 2000
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, -1, -1)
    assert sp.id_to_piece(0) == "[PAD]" and sp.id_to_piece(1) == "[UNK]" and sp.is_control(sp.piece_to_id("[eod]"))


def test_sampling_is_seeded_uniform_and_sorted(small_store: Path) -> None:
    store = pilestore.open(small_store)
    a = sample_indices(store, TrainSettings(sample_docs=300, seed=1))
    assert np.array_equal(a, sample_indices(store, TrainSettings(sample_docs=300, seed=1)))
    assert not np.array_equal(a, sample_indices(store, TrainSettings(sample_docs=300, seed=2)))
    assert len(np.unique(a)) == 300 and np.all(np.diff(a) > 0)
    assert a.min() < 100 and a.max() > 800  # drawn across the whole store, both partitions


def test_a_model_without_eod_is_refused(tmp_path: Path, small_store: Path) -> None:
    out = tmp_path / "noeod.model"
    train_tokenizer(
        pilestore.open(small_store),
        out,
        TrainSettings(sample_docs=200, options={"vocab_size": 2000, "control_symbols": [], "num_threads": 1}),
    )
    with pytest.raises(TokenizerError, match=r"\[eod\]"):
        Tokenizer(out)
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        Tokenizer(tmp_path / "junk.model")


@settings(deadline=None, max_examples=150)
@given(st.text(st.characters(exclude_categories=()), max_size=200))
def test_byte_ends_cover_the_text_exactly(text: str) -> None:
    ids, ends = _TOKENIZER[0].encode([text])[0]
    assert len(ids) == len(ends)
    if len(ids):
        assert ends[-1] == len(text.encode("utf-8", "surrogatepass"))
        assert np.all(np.diff(ends) >= 0) and ends[0] >= 0


_TOKENIZER: list[Tokenizer] = []


@pytest.fixture(autouse=True, scope="module")
def _load_tokenizer(model: Path) -> None:
    _TOKENIZER[:] = [Tokenizer(model)]


def test_token_files_hold_each_documents_encoding(view: TokenView, small_store: Path, model: Path) -> None:
    store, tokenizer = pilestore.open(small_store), Tokenizer(model)
    assert view.dtype == np.uint16 and view.meta["documents"] == len(store)
    assert view.meta["bytes"] == sum(p["text_bytes"] for p in store.manifest["partitions"])
    first = 0
    for p in range(view.num_partitions):
        part = view.partition(p)
        for local in (0, 1, len(part.n_tokens) - 1):
            ids, ends = tokenizer.encode([store[first + local].text])[0]
            begin = part.start[local]
            assert part.tokens[begin : begin + part.n_tokens[local]].tolist() == ids.tolist()
            assert view.byte_ends(p, local).tolist() == ends.tolist()
        first += len(part.n_tokens)


def test_tokens_of_hundreds_of_bytes_keep_their_exact_length(model: Path, tmp_path: Path) -> None:
    """Whitespace runs and zero-width characters make tokens of 255+ bytes (stored apart, in .long): each
    document's byte ends and every sample's byte count stay exact, across windows and partitions."""
    from pilestore.indexes import build_indexes
    from pilestore.ingest import ingest

    texts = [
        "word" + " " * 700 + "next",
        "\u200b" * 300 + "x",
        "plain text " * 40 + "\t" * 300 + "end",
        "",
        "short",
        " " * 1000,
    ]
    lines = [json.dumps({"text": t, "meta": {"pile_set_name": "Pile-CC"}}) for t in texts]
    for name, chunk in (("a.jsonl", lines[:3]), ("b.jsonl", lines[3:])):
        (tmp_path / name).write_text("\n".join(chunk) + "\n")
    ingest([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "s.store")
    store = pilestore.open(tmp_path / "s.store")
    view = TokenView(Path(tokenize(store, model)["view"]))
    tokenizer = Tokenizer(model)
    assert len(view.long_pairs(0)) >= 3  # the long tokens went to the pairs
    doc = 0
    for p in range(view.num_partitions):
        part = view.partition(p)
        assert (part.lengths == 255).sum() == len(view.long_pairs(p))
        for local in range(len(part.n_tokens)):
            assert view.byte_ends(p, local).tolist() == tokenizer.encode([texts[doc]])[0][1].tolist()
            doc += 1
    covered = sum(len(t.encode()) for t in texts if len(tokenizer.encode([t])[0][0]))
    for info in build_indexes(view, store, 16, 4, "bestfit"):
        index = SampleIndex(view, info["name"])
        assert sum(index[i].n_bytes for i in range(len(index))) == info["bytes"] == covered


def test_tokenizing_again_only_redoes_missing_partitions(view: TokenView, small_store: Path, model: Path) -> None:
    kept = (view.folder / "p00000.tokens").stat().st_mtime_ns
    redo = view.folder / "p00001.tokens"
    before = redo.read_bytes()
    for suffix in (".done", ".tokens"):
        (view.folder / f"p00001{suffix}").unlink()
    tokenize(pilestore.open(small_store), model)
    assert (view.folder / "p00000.tokens").stat().st_mtime_ns == kept
    assert redo.read_bytes() == before


def test_vocabularies_beyond_uint16_use_uint32() -> None:
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32


def test_span_bytes_add_up_to_every_byte_of_every_tokenized_document(view: TokenView, small_store: Path) -> None:
    store = pilestore.open(small_store)
    lengths = view.doc_lengths()
    n_bytes = np.concatenate([view.partition(p).n_bytes for p in range(view.num_partitions)])
    for info in (
        build_index(view, store, IndexShape("eval", 128, 32, None)),
        build_index(view, store, IndexShape("train", 128, 32, "bestfit")),
    ):
        assert info["bytes"] == int(n_bytes[lengths > 0].sum())
        assert info["target_tokens"] == int(lengths.sum())


def test_index_files_are_byte_identical_when_rebuilt(view: TokenView, small_store: Path) -> None:
    paths = [view.folder / "samples" / f"train-L64-C16-bestfit.{k}.arrow" for k in ("spans", "samples")]
    build_index(view, pilestore.open(small_store), IndexShape("train", 64, 16, "bestfit"))
    first = [p.read_bytes() for p in paths]
    build_index(view, pilestore.open(small_store), IndexShape("train", 64, 16, "bestfit"))
    assert [p.read_bytes() for p in paths] == first


def test_index_files_written_in_chunks_of_any_size_are_the_same_files(view: TokenView, small_store: Path) -> None:
    """write_index fills its files a chunk of spans or samples at a time: chunk ends anywhere (inside a document's
    windows, inside a sample's spans, at a partition's end) give the same bytes, generation and description."""
    from pilestore.indexes import document_table, write_index
    from pilestore.windows import eval_view, train_view

    subset, _, names = document_table(pilestore.open(small_store))
    lengths = view.doc_lengths()
    folder = view.folder / "samples"
    for shape, spans in (
        (IndexShape("train", 256, 64, "bestfit"), train_view(lengths, 256, 64)),
        (IndexShape("eval", 256, 64, None), eval_view(lengths, 256, 64)),
    ):
        whole = write_index(view, shape, spans, subset, names)
        files = {p.name: p.read_bytes() for p in folder.glob(f"{shape.name}.*")}
        assert len(files) == 4 and whole["spans"] > 1000
        for chunk in (1, 5, 333):
            assert write_index(view, shape, spans, subset, names, chunk=chunk) == whole
            assert {p.name: p.read_bytes() for p in folder.glob(f"{shape.name}.*")} == files, chunk
    backwards = dataclasses.replace(spans, doc=spans.doc[::-1].copy())
    with pytest.raises(ValueError, match="must come in document order"):
        write_index(view, shape, backwards, subset, names)


def test_an_index_of_no_samples_opens_empty(view: TokenView, small_store: Path) -> None:
    """A held-out split that no document falls into (a tiny --val-fraction on a small store) gives an index of
    0 samples that opens: its files hold one empty record batch (they used to hold none, and were refused)."""
    info = build_index(view, pilestore.open(small_store), IndexShape("eval", 64, 16, None, "val", 1e-9))
    assert info["samples"] == info["spans"] == info["documents"] == 0
    index = SampleIndex(view, info["name"])
    assert len(index) == 0
    with pytest.raises(IndexError):
        index[0]


def test_samples_read_back_as_shifted_inputs_and_labels(view: TokenView, small_store: Path) -> None:
    build_index(view, pilestore.open(small_store), IndexShape("train", 256, 64, "bestfit"))
    index = SampleIndex(view, "train-L256-C64-bestfit")
    total_targets = 0
    for i in range(len(index)):
        s = index[i]
        assert s.input_ids.shape == s.labels.shape == s.position_ids.shape == (256,)
        assert s.doc_lengths.sum() == 257
        targets = int((s.labels != IGNORE).sum())
        assert targets == sum(sp["target"] for sp in s.spans)
        x = np.concatenate((s.input_ids, s.labels[-1:]))
        mask = s.labels != IGNORE
        assert np.array_equal(s.labels[mask], x[1:][mask])  # labels[j] is the token after input_ids[:j + 1]
        assert s.n_bytes == sum(sp["n_bytes"] for sp in s.spans)
        total_targets += targets
    assert total_targets == int(view.doc_lengths().sum())
    with pytest.raises(IndexError):
        index[len(index)]


def test_indexes_and_views_are_mapped_not_copied(view: TokenView, small_store: Path) -> None:
    """Opening reads no column into memory (a copy would be writeable and cost the index's size per worker)."""
    build_index(view, pilestore.open(small_store), IndexShape("train", 64, 16, "bestfit"))
    index = SampleIndex(view, "train-L64-C16-bestfit")
    part = view.partition(0)
    mapped = []  # address ranges of this process's mappings of the view's files (Linux)
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].startswith(str(view.folder)):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            mapped.append((lo, hi))
    arrays = {**index.spans, **index.samples, "start": part.start, "n_tokens": part.n_tokens}
    arrays |= {"sample records": index._sample_records, "span records": index._span_records}
    for name, a in arrays.items():
        assert any(lo <= a.ctypes.data < hi for lo, hi in mapped), f"{name} is a copy, not a view of its file"


def test_index_files_of_different_builds_are_refused_together(view: TokenView, small_store: Path) -> None:
    """A reader opening while an index is rebuilt could pair old and new files: the generation check refuses."""
    from pilestore.indexes import document_table, write_index
    from pilestore.windows import train_view

    store = pilestore.open(small_store)
    shape = IndexShape("train", 96, 24, "bestfit")
    build_index(view, store, shape)
    old_samples = (view.folder / "samples" / f"{shape.name}.samples.arrow").read_bytes()
    subset, _, names = document_table(store)
    write_index(view, shape, train_view(view.doc_lengths(), 96, 24), (subset + 1) % len(names), names)
    new = SampleIndex(view, shape.name)  # the new build, whole: fine
    samples_file = view.folder / "samples" / f"{shape.name}.samples.arrow"
    new_samples = samples_file.read_bytes()
    samples_file.write_bytes(old_samples)
    with pytest.raises(pilestore.PilestoreError, match="different builds"):
        SampleIndex(view, shape.name, wait=0.3)

    # a rebuild that completes while a reader waits: the reader opens the finished build
    def finish_rebuild() -> None:  # as write_index does: a whole file renamed into place, never a partial one
        samples_file.with_suffix(".tmp").write_bytes(new_samples)
        os.replace(samples_file.with_suffix(".tmp"), samples_file)

    threading.Timer(0.5, finish_rebuild).start()
    started = time.monotonic()
    assert len(SampleIndex(view, shape.name, wait=10)) == len(new) and time.monotonic() - started >= 0.4
    with pytest.raises(pilestore.PilestoreError, match="rebuilt since"):  # a pinned build (a dataset's workers)
        SampleIndex(view, shape.name, generation="another build")


def test_val_split_holds_out_whole_documents_by_text_hash(view: TokenView, small_store: Path) -> None:
    from pilestore.indexes import document_table
    from pilestore.splits import in_split

    store = pilestore.open(small_store)
    train = build_index(view, store, IndexShape("train", 128, 32, "bestfit", "train", 0.2))
    val = build_index(view, store, IndexShape("eval", 128, 32, None, "val", 0.2))
    assert (train["name"], val["name"]) == ("train-L128-C32-bestfit-train0.2", "eval-L128-C32-val0.2")
    docs = {name: set(SampleIndex(view, name).spans["doc"].tolist()) for name in (train["name"], val["name"])}
    lengths = view.doc_lengths()
    assert docs[train["name"]].isdisjoint(docs[val["name"]])
    assert docs[train["name"]] | docs[val["name"]] == set(np.flatnonzero(lengths > 0).tolist())
    assert 0.12 < len(docs[val["name"]]) / (lengths > 0).sum() < 0.28
    assert train["target_tokens"] + val["target_tokens"] == int(lengths.sum())
    _, checksum, _ = document_table(store)
    held = in_split(checksum, "val", 0.2)
    assert held.sum() and np.array_equal(held, in_split(checksum.copy(), "val", 0.2))
    assert np.all(held <= in_split(checksum, "val", 0.5))  # a larger fraction only moves documents to val
    same_text = checksum[:, None] == checksum[None, :]
    assert np.all(held[:, None] == held[None, :], where=same_text)  # duplicates fall on one side


def test_each_sample_has_the_subset_of_its_largest_span(view: TokenView, small_store: Path) -> None:
    from pilestore.indexes import document_table

    store = pilestore.open(small_store)
    build_index(view, store, IndexShape("train", 256, 64, "bestfit"))
    index = SampleIndex(view, "train-L256-C64-bestfit")
    doc_subset, _, names = document_table(store)
    assert index.subset_names == names == sorted(store.subsets)
    subset, by_subset = index.samples["subset"], index.samples["by_subset"]
    for i in range(len(index)):
        spans = index[i].spans
        largest = max(range(len(spans)), key=lambda k: (spans[k]["target"], -k))
        assert subset[i] == doc_subset[spans[largest]["doc"]]
    assert np.array_equal(np.sort(by_subset), np.arange(len(index)))
    assert np.all(np.diff(subset[by_subset]) >= 0) and np.array_equal(
        index.subset_samples, np.bincount(subset, minlength=len(names))
    )


def test_cli_tokenize_index_and_sample_views(small_store: Path, model: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "tokenize",
            "--store",
            str(small_store),
            "--tokenizer",
            str(model),
            "--seq-len",
            "256",
            "--context",
            "64",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [i["name"] for i in report["indexes"]] == ["eval-L256-C64", "train-L256-C64-bestfit"]
    store = pilestore.open(small_store)
    assert {k: v["documents"] for k, v in report["subsets"].items()} == store.subsets
    assert sum(v["tokens"] for v in report["subsets"].values()) == report["tokens"]
    assert all(0 < v["tokens_per_byte"] < 1 for v in report["subsets"].values())
    result = runner.invoke(
        cli,
        ["index", "--store", str(small_store), "--seq-len", "100", "--context", "10", "--packing", "greedy", "--json"],
    )
    assert result.exit_code == 0, result.output
    shown = runner.invoke(
        cli, ["sample", "--store", str(small_store), "--idx", "0", "--view", "eval", "--seq-len", "256", "--json"]
    )
    assert shown.exit_code == 0, shown.output
    sample = json.loads(shown.output)
    assert sample["spans"][0]["eod"] == 1 and sample["labels"][0] != IGNORE
    text = runner.invoke(
        cli, ["sample", "--store", str(small_store), "--idx", "2", "--view", "train", "--seq-len", "256"]
    )
    assert text.exit_code == 0 and "targets" in text.output
    ambiguous = runner.invoke(cli, ["sample", "--store", str(small_store), "--idx", "0", "--view", "eval"])
    assert ambiguous.exit_code == 1 and "sample indexes of" in ambiguous.output and "kind=eval" in ambiguous.output


def test_sample_view_on_an_untokenized_store_says_what_to_do(sample_store_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["sample", "--store", str(sample_store_dir), "--idx", "0", "--view", "train"])
    assert result.exit_code == 1 and "pilestore tokenize" in result.output


def test_train_tokenizer_cli(small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.model"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f".t.model.tmp-{int(dead.stdout)}"  # what a run killed before its rename leaves
    killed.write_bytes(b"half a model")
    result = CliRunner().invoke(
        cli,
        [
            "train-tokenizer",
            "--store",
            str(small_store),
            "--vocab-size",
            "2000",
            "--sample-docs",
            "200",
            "--byte-fallback",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["options"]["byte_fallback"] is True and Tokenizer(out).vocab_size == 2000
    assert not killed.exists()  # a dead process's temp file is removed
    bad = CliRunner().invoke(
        cli, ["train-tokenizer", "--store", str(small_store), "--out", str(out), "--option", "novalue"]
    )
    assert bad.exit_code == 2


def test_a_vocabulary_too_small_for_the_sample_fails_with_what_to_do_and_writes_no_model(
    small_store: Path, tmp_path: Path
) -> None:
    """sentencepiece's own error (raised in its training thread) reaches the command as one line with the fix."""
    out = tmp_path / "t.model"
    args = ["train-tokenizer", "--store", str(small_store), "--vocab-size", "300", "--sample-docs", "200"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 1 and "sentencepiece training failed" in result.output
    assert "give a larger --vocab-size" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_store_of_only_empty_texts_gives_no_tokenizer_and_says_why(make_shard, tmp_path: Path) -> None:  # noqa: ANN001
    from pilestore.ingest import ingest

    from .conftest import doc

    ingest([make_shard([doc(""), doc("", "Github")])], tmp_path / "s.store")
    out = tmp_path / "t.model"
    args = ["train-tokenizer", "--store", str(tmp_path / "s.store"), "--vocab-size", "100", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "The 2 sampled documents hold no text" in result.output, result.output
    assert not out.exists()


def test_ctrl_c_while_sentencepiece_trains_stops_at_once_and_writes_no_model(
    sample_store_dir: Path, tmp_path: Path
) -> None:
    """sentencepiece trains in one C call (minutes on a Pile sample): Ctrl-C must not wait for it to end. A
    SIGINT 0.3 s into training (32k pieces over the sample corpus: seconds) reaches the caller while the training
    thread is still at work (its OS thread still runs: Linux's /proc), and no model file is written."""
    import subprocess
    import sys

    out = tmp_path / "t.model"
    code = (
        "import os, signal, threading, sys\n"
        "from pathlib import Path\n"
        "import pilestore\n"
        "from pilestore.tokenizer import TrainSettings, train_tokenizer\n"
        "def on_stage(stage, total):\n"
        "    if stage == 'train':\n"
        "        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "    return lambda n: None\n"
        "settings = TrainSettings(options={'vocab_size': 32000})\n"
        "try:\n"
        f"    store = pilestore.open({str(sample_store_dir)!r})\n"
        f"    train_tokenizer(store, Path({str(out)!r}), settings, on_stage=on_stage)\n"
        "    print('finished')\n"
        "except KeyboardInterrupt:\n"
        "    ids = [t.native_id for t in threading.enumerate() if t.name == 'sentencepiece']\n"
        "    print('interrupted', [os.path.exists(f'/proc/self/task/{i}') for i in ids])\n"
    )  # the thread's OS thread, not is_alive(): a join cut short by KeyboardInterrupt marks its thread stopped
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "interrupted [True]"  # the training thread still at work: nobody waited for it
    assert list(tmp_path.iterdir()) == []


def test_long_texts_cut_for_threads_give_the_same_tokens_and_offsets(sample_records: list[dict], model: Path) -> None:
    tokenizer = Tokenizer(model)
    long_texts = [r["text"] for r in sample_records if len(r["text"]) > 20_000][:40]
    assert len(long_texts) >= 20
    whole = tokenizer.encode_batch(long_texts, chunk_chars=10**9)
    cut = tokenizer.encode_batch(long_texts, threads=2, chunk_chars=4096)
    for a, b in zip(whole, cut, strict=True):
        assert np.array_equal(a, b)


@pytest.fixture(scope="module")
def hf_tokenizer_json(small_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real byte-level BPE tokenizer.json trained with the tokenizers library on the small store."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    store = pilestore.open(small_store)
    tok.train_from_iterator((store[i].text.encode("utf-8", "replace").decode() for i in range(300)), trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hugging_face_tokenizer_json_is_accepted(
    hf_tokenizer_json: Path, small_store: Path, sample_records: list[dict]
) -> None:
    tokenizer = Tokenizer(hf_tokenizer_json)
    assert tokenizer.eod_id == 0 and tokenizer.vocab_size == 1000
    texts = [r["text"] for r in sample_records[:300]]
    for text, (ids, ends) in zip(texts, tokenizer.encode(texts), strict=True):
        if len(ids):
            assert ends[-1] == len(text.encode("utf-8", "surrogatepass")) and np.all(np.diff(ends) >= 0)
    assert tokenizer.decode(tokenizer.encode(["hello wörld"])[0][0]) == "hello wörld"
    result = tokenize(pilestore.open(small_store), hf_tokenizer_json)
    assert Path(result["view"]).name.startswith("tokenizer-") and result["documents"] == len(
        pilestore.open(small_store)
    )


def test_a_tokenizer_json_without_an_eod_token_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    path = tmp_path / "tokenizer.json"
    HFTokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
    with pytest.raises(TokenizerError, match="end-of-document"):
        Tokenizer(path)


def test_a_killed_tokenize_resumes_to_identical_files(
    small_store: Path, model: Path, tmp_path: Path, view: TokenView
) -> None:
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    store_dir = tmp_path / "copy.store"
    shutil.copytree(small_store, store_dir, ignore=shutil.ignore_patterns("tokens"))
    cmd = [
        sys.executable,
        "-m",
        "pilestore",
        "tokenize",
        "--store",
        str(store_dir),
        "--tokenizer",
        str(model),
        "--seq-len",
        "128",
        "--context",
        "32",
        "-q",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(store_dir.glob("tokens/*/p0000*.tokens.tmp")) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = next((store_dir / "tokens").iterdir())
    assert not (folder / "view.json").exists()  # no view that looks complete
    assert subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode == 0
    for name in ("p00000.tokens", "p00000.lens", "p00001.tokens", "p00001.lens", "p00001.long"):
        assert (folder / name).read_bytes() == (view.folder / name).read_bytes()
    assert not list(folder.glob("*.tmp"))


def test_token_commands_fail_clearly(small_store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["tokenize", "--store", str(small_store), "--tokenizer", str(tmp_path / "no.model")])
    assert missing.exit_code == 1 and "no such tokenizer file" in missing.output
    shape = runner.invoke(cli, ["index", "--store", str(small_store), "--seq-len", "64", "--context", "128"])
    assert shape.exit_code == 2 and "must not exceed --seq-len" in shape.output
    tiny = runner.invoke(
        cli,
        [
            "train-tokenizer",
            "--store",
            str(small_store),
            "--out",
            str(tmp_path / "t.model"),
            "--vocab-size",
            "10",
            "--sample-docs",
            "50",
        ],
    )
    assert tiny.exit_code == 1 and "--option character_coverage" in tiny.output
    assert not (tmp_path / "t.model").exists()


def test_every_single_bit_flip_in_a_samples_records_fails_its_check() -> None:
    """The read-time check of a sample (samples._record_ok): any one flipped bit of the sample record or of
    its span records is refused, and the untouched records pass."""
    from pilestore.samples import _SAMPLE_WORDS, _SPAN_WORDS, SAMPLE_RECORD, SPAN_RECORD, _record_ok, record_checks

    rng = np.random.default_rng(5)
    counts = [3, 1, 2]
    spans = np.zeros(sum(counts), SPAN_RECORD)
    for field in ("doc", "start", "offset", "n_bytes", "context", "target", "subset", "eod"):
        spans[field] = rng.integers(0, 100, len(spans))
    samples = np.zeros(len(counts), SAMPLE_RECORD)
    samples["span_begin"] = np.concatenate(([0], np.cumsum(counts)[:-1]))
    samples["n_spans"], samples["n_bytes"], samples["n_tokens"] = counts, rng.integers(0, 9, 3), 129
    samples["check"] = record_checks(samples, spans)

    def ok(i: int, sample_bytes: bytes, span_bytes: bytes) -> bool:
        record = np.frombuffer(sample_bytes, SAMPLE_RECORD)[0]
        words = np.frombuffer(span_bytes, np.uint64)
        head = np.frombuffer(sample_bytes, np.uint64)[:_SAMPLE_WORDS]
        return _record_ok(int(record["check"]), head, words, counts[i])

    for i, count in enumerate(counts):
        first = int(samples["span_begin"][i])
        sample_bytes, span_bytes = samples[i].tobytes(), spans[first : first + count].tobytes()
        assert ok(i, sample_bytes, span_bytes)
        assert len(span_bytes) == count * _SPAN_WORDS * 8
        for which in ("sample", "spans"):
            data = sample_bytes if which == "sample" else span_bytes
            for bit in range(len(data) * 8):
                flipped = bytearray(data)
                flipped[bit // 8] ^= 1 << (bit % 8)
                args = (bytes(flipped), span_bytes) if which == "sample" else (sample_bytes, bytes(flipped))
                assert not ok(i, *args), (i, which, bit)


def test_an_index_build_names_a_missing_or_damaged_byte_file(small_store: Path, model: Path, tmp_path: Path) -> None:
    import shutil

    from pilestore.tokens import TokenDamageError

    store_dir = tmp_path / "s.store"
    shutil.copytree(small_store, store_dir, ignore=shutil.ignore_patterns("tokens"))
    store = pilestore.open(store_dir)
    folder = Path(tokenize(store, model)["view"])
    shape = IndexShape("eval", 64, 16, None)
    (folder / "p00001.long").unlink()
    with pytest.raises(TokenDamageError, match=r"p00001.long: missing from the view; delete .* tokenize"):
        build_index(TokenView(folder), store, shape)
    (folder / "p00001.long").write_bytes(b"")
    data = bytearray((folder / "p00000.lens").read_bytes())
    data[5] ^= 1
    (folder / "p00000.lens").write_bytes(bytes(data))
    with pytest.raises(TokenDamageError, match=r"p00000.lens: does not match the xxh3"):
        build_index(TokenView(folder), store, shape)


@pytest.mark.parametrize("older", ["no block checksums", "uint32 byte ends"])
def test_a_view_of_an_older_format_is_refused_with_what_to_do(
    small_store: Path, model: Path, tmp_path: Path, older: str
) -> None:
    import shutil

    from pilestore.manifest import read_sealed, write_sealed
    from pilestore.tokens import TokensError

    store_dir = tmp_path / "old.store"
    shutil.copytree(small_store, store_dir, ignore=shutil.ignore_patterns("tokens"))
    folder = Path(tokenize(pilestore.open(store_dir), model)["view"])
    if older == "no block checksums":
        (folder / "p00000.sums").unlink()  # as an older pilestore left it
    else:  # the first format: uint32 ends in .bytes, no .lens/.long
        (folder / "p00000.lens").rename(folder / "p00000.bytes")
        (folder / "p00000.long").unlink()
    with pytest.raises(TokensError, match="older pilestore .*delete it and run `pilestore tokenize` again"):
        TokenView(folder).partition(0)
    done = read_sealed(folder / "p00001.done", "")
    del done["sha256"]["sums" if older == "no block checksums" else "lens"]
    write_sealed(folder / "p00001.done", done)
    with pytest.raises(TokensError, match="older pilestore"):
        tokenize(pilestore.open(store_dir), model)


def test_record_checks_of_a_chunk_of_samples_equal_those_of_all() -> None:
    """record_checks over samples 2.. with only their spans (first_span) gives the checks of the whole index."""
    from pilestore.samples import SAMPLE_RECORD, SPAN_RECORD, record_checks

    rng = np.random.default_rng(6)
    counts = [2, 1, 3, 1, 2]
    spans = np.zeros(sum(counts), SPAN_RECORD)
    spans["doc"], spans["start"] = rng.integers(0, 1000, len(spans)), rng.integers(0, 10**9, len(spans))
    samples = np.zeros(len(counts), SAMPLE_RECORD)
    samples["span_begin"] = np.concatenate(([0], np.cumsum(counts)[:-1]))
    samples["n_spans"], samples["n_tokens"] = counts, 65
    whole = record_checks(samples, spans)
    first = int(samples["span_begin"][2])
    assert np.array_equal(record_checks(samples[2:], spans[first:], first_span=first), whole[2:])
    for rows in (1, 2, 3):  # worked out a few samples at a time, each chunk with its spans: the same checks
        assert np.array_equal(record_checks(samples, spans, rows=rows), whole)
        assert np.array_equal(record_checks(samples[2:], spans[first:], first_span=first, rows=rows), whole[2:])


def test_record_checks_in_chunks_keep_samples_without_spans() -> None:
    """Samples with no spans (anywhere in a chunk, or a whole chunk of them) take only their own record: the
    checks worked out in chunks of any size are those the reader's per-sample check (_record_ok) accepts."""
    from pilestore.samples import _SAMPLE_WORDS, _SPAN_WORDS, SAMPLE_RECORD, SPAN_RECORD, _record_ok, record_checks

    rng = np.random.default_rng(7)
    counts = [0, 2, 0, 0, 1, 3, 0, 1, 0]
    spans = np.zeros(sum(counts), SPAN_RECORD)
    spans["doc"], spans["n_bytes"] = rng.integers(0, 1000, len(spans)), rng.integers(1, 10**6, len(spans))
    samples = np.zeros(len(counts), SAMPLE_RECORD)
    samples["span_begin"] = np.concatenate(([0], np.cumsum(counts)[:-1]))
    samples["n_spans"], samples["n_tokens"] = counts, rng.integers(1, 65, len(counts))
    heads = samples.view(np.uint64).reshape(len(samples), -1)[:, :_SAMPLE_WORDS]
    words = spans.view(np.uint64).reshape(-1)
    for rows in (1, 2, 3, 4, 1 << 16):
        checks = record_checks(samples, spans, rows=rows)
        for k, (begin, count) in enumerate(zip(samples["span_begin"].tolist(), counts, strict=True)):
            span_words = words[begin * _SPAN_WORDS : (begin + count) * _SPAN_WORDS]
            assert _record_ok(int(checks[k]), heads[k], span_words, count), (rows, k)


def test_ingest_tokenize_and_index_do_not_import_pandas(small_store: Path, model: Path, tmp_path: Path) -> None:
    """pa.array()/pa.table() import pandas where it is installed (0.4 s in every process that writes Arrow
    files); the index, token view and sample index files are written from numpy buffers without it."""
    import shutil
    import subprocess
    import sys

    shutil.copytree(small_store, tmp_path / "copy.store")
    (tmp_path / "more.jsonl").write_text(json.dumps({"text": "one more document", "meta": {"pile_set_name": "x"}}))
    code = (
        "import sys, pilestore\n"
        "from pathlib import Path\n"
        "from pilestore.indexes import build_indexes\n"
        "from pilestore.ingest import ingest\n"
        "from pilestore.tokens import TokenView, tokenize\n"
        f"ingest([Path({str(tmp_path / 'more.jsonl')!r})], Path({str(tmp_path / 'fresh.store')!r}))\n"
        f"store = pilestore.open({str(tmp_path / 'copy.store')!r})\n"
        f"view = TokenView(Path(tokenize(store, Path({str(model)!r}))['view']))\n"
        "build_indexes(view, store, 64, 16, 'bestfit')\n"
        "print(sorted(m for m in ('pandas',) if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[]"


def test_sample_of_a_view_or_a_step_imports_neither_torch_nor_numba(view: TokenView, small_store: Path) -> None:
    """`pilestore sample --view/--step` reads samples and decodes their tokens: no torch, and no numba (the
    tokenizer's probe for cutting long texts, which encodes with numba's help, waits for the first encode)."""
    import subprocess
    import sys

    from pilestore.indexes import build_indexes

    build_indexes(view, pilestore.open(small_store), 96, 24, "bestfit")
    shape = ["--store", str(small_store), "--tokenizer", str(view.folder / "tokenizer.model")]
    shape += ["--seq-len", "96", "--context", "24"]
    cases = (  # (arguments, what the output begins with): text output decodes the sample with the tokenizer
        (["--idx", "3", "--view", "train"], "# sample 3 of "),
        (["--idx", "-1", "--view", "eval", "--json"], "{"),
        (["--step", "2", "--global-batch", "4", "--json"], "{"),
        (["--step", "2", "--global-batch", "4"], ""),
    )
    for args, begins in cases:
        code = (
            "import json, sys\nfrom pilestore.cli import main\n"
            f"sys.argv = ['pilestore', 'sample', *{args + shape!r}]\n"
            "try:\n    main()\nexcept SystemExit as end:\n    assert not end.code, end.code\n"
            "print('\\nLOADED', json.dumps(sorted(m for m in ('torch', 'numba') if m in sys.modules)))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stderr)
        shown, loaded = done.stdout.rsplit("\nLOADED ", 1)
        assert shown.strip() and shown.startswith(begins) and json.loads(loaded) == [], (args, shown[:200], loaded)


def test_views_and_indexes_behind_their_store_are_refused_until_tokenize_catches_up(
    tmp_path: Path, sample_path: Path, model: Path
) -> None:
    """Sources ingested after a store was tokenized: training on the view (or on an index built before the view
    grew) would leave their documents out without a word, so both are refused, saying what to run; `pilestore
    tokenize` then tokenizes them and rebuilds every index of the view, also ones it was not asked for."""
    from pilestore.ingest import ingest
    from pilestore.samples import find_index
    from pilestore.tokens import ViewBehindError, find_view

    from .conftest import read_source_lines

    lines = read_source_lines(sample_path)[:300]
    for name, chunk in (("a.jsonl", lines[:200]), ("b.jsonl", lines[200:])):
        (tmp_path / name).write_bytes(b"\n".join(chunk) + b"\n")
    path = tmp_path / "s.store"
    ingest([tmp_path / "a.jsonl"], path)
    runner = CliRunner()
    shape = ["--seq-len", "64", "--context", "16"]
    done = runner.invoke(cli, ["tokenize", "--store", str(path), "--tokenizer", str(model), *shape, "--json"])
    assert done.exit_code == 0, done.output
    other = ["--seq-len", "32", "--context", "8", "--val-fraction", "0.2"]
    assert runner.invoke(cli, ["index", "--store", str(path), *other, "--json"]).exit_code == 0
    ingest([tmp_path / "b.jsonl"], path)

    def views() -> list[tuple[bool, int, list[bool]]]:  # what `pilestore info --json` says of the views
        shown = runner.invoke(cli, ["info", "--store", str(path), "--json"])
        assert shown.exit_code == 0, shown.output
        described = json.loads(shown.output)["views"]
        return [(v["up_to_date"], v["partitions"], [i["up_to_date"] for i in v["indexes"]]) for v in described]

    assert views() == [(False, 1, [True] * 4)]
    with pytest.raises(
        ViewBehindError, match=r"tokenized 1 of the store's 2 partitions; the 100 documents of b\.jsonl"
    ):
        find_view(pilestore.open(path), None)
    shown = runner.invoke(cli, ["sample", "--store", str(path), "--idx", "0", "--view", "train", "--seq-len", "64"])
    assert shown.exit_code == 1 and "pilestore tokenize --store" in shown.output

    tokenize(pilestore.open(path), model)  # the view catches up; its indexes, built before, are now behind it
    assert views() == [(True, 2, [False] * 4)]
    view = find_view(pilestore.open(path), None)
    with pytest.raises(ViewBehindError, match=r"built when the view had 1 of the 2 partitions.*--seq-len 64"):
        SampleIndex(view, find_index(view, "train", 64, 16))

    done = runner.invoke(cli, ["tokenize", "--store", str(path), "--tokenizer", str(model), *shape, "--json"])
    assert done.exit_code == 0, done.output
    rebuilt = {info["name"] for info in json.loads(done.output)["indexes"]}
    assert views() == [(True, 2, [True] * 4)]
    assert rebuilt == {"eval-L64-C16", "train-L64-C16-bestfit", "eval-L32-C8-val0.2", "train-L32-C8-bestfit-train0.2"}
    store = pilestore.open(path)
    view = find_view(store, None)
    for name in rebuilt:  # every index opens and covers documents of both sources
        index = SampleIndex(view, name)
        docs = {span["doc"] for i in range(len(index)) for span in index[i].spans}
        assert max(docs) >= 200 and min(docs) < 200, name
    full = SampleIndex(view, "eval-L64-C16")
    assert sum(full[i].n_bytes for i in range(len(full))) == sum(
        len(d.text.encode("utf-8", "surrogatepass")) for d in store
    )


def test_a_view_made_for_another_store_is_refused(tmp_path: Path, small_store: Path, view: TokenView) -> None:
    import shutil

    from pilestore.ingest import ingest
    from pilestore.tokens import TokensError, find_view

    (tmp_path / "c.jsonl").write_text(
        "\n".join(json.dumps({"text": f"doc {i}", "meta": {"pile_set_name": "Pile-CC"}}) for i in range(7)) + "\n"
    )
    ingest([tmp_path / "c.jsonl"], tmp_path / "c.store")
    shutil.copytree(view.folder, tmp_path / "c.store" / "tokens" / view.folder.name)
    with pytest.raises(TokensError, match=r"partition 0 holds 600 documents, the store's 7: .*another store"):
        find_view(pilestore.open(tmp_path / "c.store"), None)


def test_info_lists_a_damaged_view_or_index_with_its_error(tmp_path: Path, model: Path) -> None:
    from pilestore.ingest import ingest

    (tmp_path / "d.jsonl").write_text(
        "\n".join(json.dumps({"text": f"document {i} " * 30, "meta": {"pile_set_name": "Pile-CC"}}) for i in range(40))
    )
    ingest([tmp_path / "d.jsonl"], tmp_path / "d.store")
    runner = CliRunner()
    args = [
        "tokenize",
        "--store",
        str(tmp_path / "d.store"),
        "--tokenizer",
        str(model),
        "--seq-len",
        "64",
        "--context",
        "16",
    ]
    assert runner.invoke(cli, args).exit_code == 0
    view = next((tmp_path / "d.store" / "tokens").iterdir())
    index = view / "samples" / "eval-L64-C16.json"
    index.write_text(index.read_text().replace('"seq_len": 64', '"seq_len": 65'))

    def described() -> list[dict]:
        shown = runner.invoke(cli, ["info", "--store", str(tmp_path / "d.store"), "--json"])
        assert shown.exit_code == 0, shown.output
        return json.loads(shown.output)["views"]

    [found] = described()
    assert found["up_to_date"] and found["documents"] == 40
    assert [(i["name"], "error" in i) for i in found["indexes"]] == [
        ("eval-L64-C16", True),
        ("train-L64-C16-bestfit", False),
    ]
    assert "eval-L64-C16.json" in found["indexes"][0]["error"] and "seal" in found["indexes"][0]["error"]
    (view / "view.json").write_text("{ not json")
    [found] = described()
    assert set(found) == {"view", "error"} and "view.json" in found["error"]
    shown = runner.invoke(cli, ["info", "--store", str(tmp_path / "d.store")])
    assert shown.exit_code == 0 and "view.json" in shown.output


def test_a_partition_of_no_documents_tokenizes_and_reads_like_none_at_all(
    sample_path: Path, model: Path, tmp_path: Path
) -> None:
    """An empty .jsonl source is a partition of no documents (ingest keeps it, as a source whose every line
    was skipped): tokenize, other index shapes, verify and the Dataset work as if it were not there. Its
    document table once held no Arrow record batch, and every command on the view failed."""
    from pilestore.ingest import ingest
    from pilestore.torch import PileDataset

    from .conftest import read_source_lines

    source, empty = tmp_path / "a.jsonl", tmp_path / "empty.jsonl"
    source.write_bytes(b"\n".join(read_source_lines(sample_path)[:300]) + b"\n")
    empty.write_bytes(b"")
    with_empty, plain = tmp_path / "with-empty.store", tmp_path / "plain.store"
    ingest([source, empty], with_empty)
    ingest([source], plain)
    assert pilestore.open(with_empty).num_partitions == 2 and len(pilestore.open(with_empty)) == 300
    runner = CliRunner()
    shape = ["--seq-len", "64", "--context", "16"]
    for path in (with_empty, plain):
        done = runner.invoke(cli, ["tokenize", "--store", str(path), "--tokenizer", str(model), *shape])
        assert done.exit_code == 0, done.output
        other = ["index", "--store", str(path), "--seq-len", "32", "--context", "8", "--val-fraction", "0.2"]
        assert runner.invoke(cli, other).exit_code == 0
    verified = runner.invoke(cli, ["verify", "--store", str(with_empty)])
    assert verified.exit_code == 0, verified.output
    shapes = {"seq_len": 32, "context": 8, "split": "val", "val_fraction": 0.2}
    for kind, options in (("train", {"seq_len": 64, "context": 16}), ("eval", shapes)):
        a, b = (PileDataset(pilestore.open(p), kind, tokenizer=model, **options) for p in (with_empty, plain))
        assert len(a) == len(b) > 0
        for i in (0, len(a) // 2, len(a) - 1):
            assert all(np.array_equal(a[i][key], b[i][key]) for key in ("input_ids", "labels", "n_bytes")), i
