"""`pilestore train-tokenizer`, `tokenize` and `index`: the token side of a store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ..errors import PilestoreError
from .options import json_option, quiet_option, store_option, workers_option, writable_file
from .ui import Ui

tokenizer_option = click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Tokenizer model; needed when the store has several tokenized views.",
)
seq_len_option = click.option(
    "--seq-len", default=2048, show_default=True, type=click.IntRange(min=1), help="Tokens a model sees per sample."
)
context_option = click.option(
    "--context",
    default=512,
    show_default=True,
    type=click.IntRange(min=1),
    help="Tokens of preceding text that later windows of a long document carry.",
)
val_fraction_option = click.option(
    "--val-fraction",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    default=None,
    help="Hold out this fraction of documents (by text hash): train view over the rest, eval view over them.",
)
packing_option = click.option(
    "--packing",
    default="bestfit",
    show_default=True,
    type=click.Choice(["bestfit", "greedy"]),
    help="How the train view packs samples.",
)


def check_shape(seq_len: int, context: int) -> None:
    """A usage error, before any work, when the context does not fit the window."""
    if context > seq_len:
        raise click.BadParameter(f"--context {context} must not exceed --seq-len {seq_len}")


def _print_indexes(ui: Ui, infos: list[dict[str, Any]]) -> None:
    for info in infos:
        ui.out.print(
            f"{info['name']}: {info['samples']:,} samples, {info['target_tokens']:,} target tokens, "
            f"{info['padding_fraction']:.2%} padding, {info['bytes']:,} bytes"
        )


@click.command("train-tokenizer")
@store_option
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    callback=writable_file,
    help="Model file to write.",
)
@click.option("--vocab-size", default=50000, show_default=True, type=click.IntRange(min=8))
@click.option("--sample-docs", type=click.IntRange(min=1), default=None, help="Documents to sample.")
@click.option(
    "--sample-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=100.0,
    show_default=True,
    help="Megabytes of text to sample (when --sample-docs is not given).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--byte-fallback", is_flag=True, help="Unknown characters become byte tokens instead of [UNK].")
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other sentencepiece trainer option, e.g. --option character_coverage=0.9995.",
)
@json_option
def train_tokenizer(
    store_dir: Path,
    out: Path,
    vocab_size: int,
    sample_docs: int | None,
    sample_mb: float,
    seed: int,
    byte_fallback: bool,
    options: tuple[str, ...],
    json_output: bool,
) -> None:
    """Train a sentencepiece tokenizer on a random sample of the store's documents.

    Defaults reproduce the Pile configuration: bpe, [PAD]=0, [UNK]=1, no bos/eos, an [eod] control symbol.

    \b
    Example:
        pilestore train-tokenizer --store pile.store --vocab-size 50000 --sample-mb 500 --out tok.model
    """
    from .. import open as open_store
    from ..tokenizer import TrainSettings
    from ..tokenizer import train_tokenizer as run_train

    extra: dict[str, Any] = {"vocab_size": vocab_size, "num_threads": max(1, os.cpu_count() or 1)}
    if byte_fallback:
        extra["byte_fallback"] = True
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise click.BadParameter(f"{option!r} is not KEY=VALUE", param_hint="--option")
        extra[key] = value
    ui = Ui(json_output=json_output)
    result = run_train(
        open_store(store_dir),
        out,
        TrainSettings(sample_docs=sample_docs, sample_mb=sample_mb, seed=seed, options=extra),
    )
    if json_output:
        ui.emit_json(result)
    else:
        ui.out.print(
            f"wrote {out} ({result['options']['vocab_size']:,} pieces) from {result['documents']:,} "
            f"sampled documents; sha256 {result['sha256'][:16]}"
        )


@click.command()
@store_option
@click.option(
    "--tokenizer",
    "tokenizer_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="sentencepiece .model file.",
)
@seq_len_option
@context_option
@packing_option
@val_fraction_option
@workers_option("Threads that encode documents in parallel.")
@json_option
@quiet_option
def tokenize(
    store_dir: Path,
    tokenizer_path: Path,
    seq_len: int,
    context: int,
    packing: str,
    val_fraction: float | None,
    workers: int,
    json_output: bool,
    quiet: bool,
) -> None:
    """Tokenize every document of the store, then build its eval and train sample indexes.

    Resumable: partitions already tokenized with this tokenizer are kept.

    \b
    Example:
        pilestore tokenize --store pile.store --tokenizer tok.model --seq-len 2048 --context 512 --workers 2
    """
    from .. import open as open_store
    from ..indexes import build_indexes
    from ..tokens import TokenView, subset_stats
    from ..tokens import tokenize as run_tokenize

    check_shape(seq_len, context)
    ui = Ui(json_output=json_output, quiet=quiet)
    store = open_store(store_dir)
    with ui.docs_progress("tokenize", len(store)) as advance:
        result = run_tokenize(store, tokenizer_path, threads=workers, on_docs=advance)
    view = TokenView(Path(result["view"]))
    infos = build_indexes(view, store, seq_len, context, packing, val_fraction)
    subsets = subset_stats(store, view)
    if json_output:
        ui.emit_json({**{k: v for k, v in result.items() if k != "partitions"}, "subsets": subsets, "indexes": infos})
        return
    from rich.table import Table

    title = (
        f"{result['documents']:,} documents -> {result['tokens']:,} tokens "
        f"({result['tokens'] / max(1, result['bytes']):.3f} tokens per byte) in {result['view']}"
    )
    table = Table(title=title, title_justify="left")
    for name in ("subset", "documents", "tokens", "MB", "tokens per byte"):
        table.add_column(name, justify="left" if name == "subset" else "right")
    for name, v in subsets.items():
        table.add_row(
            name, f"{v['documents']:,}", f"{v['tokens']:,}", f"{v['bytes'] / 1e6:,.2f}", f"{v['tokens_per_byte']:.3f}"
        )
    ui.out.print(table)
    _print_indexes(ui, infos)


@click.command()
@store_option
@tokenizer_option
@seq_len_option
@context_option
@packing_option
@val_fraction_option
@json_option
def index(
    store_dir: Path,
    tokenizer_path: Path | None,
    seq_len: int,
    context: int,
    packing: str,
    val_fraction: float | None,
    json_output: bool,
) -> None:
    """Build the eval and train sample indexes for another length, without re-tokenizing.

    With --val-fraction F, documents whose text hash falls in the first F of the hash range are held out:
    the train index covers the others (split "train"), the eval index exactly them (split "val").

    \b
    Example:
        pilestore index --store pile.store --seq-len 1024 --context 256
        pilestore index --store pile.store --seq-len 1024 --context 256 --val-fraction 0.01
    """
    from .. import open as open_store
    from ..indexes import build_indexes
    from ..tokens import find_view

    check_shape(seq_len, context)
    ui = Ui(json_output=json_output)
    store = open_store(store_dir)
    infos = build_indexes(find_view(store, tokenizer_path), store, seq_len, context, packing, val_fraction)
    if json_output:
        ui.emit_json(infos)
    else:
        _print_indexes(ui, infos)


def show_sample(
    ui: Ui,
    store: Any,
    idx: int,
    kind: str,
    tokenizer_path: Path | None,
    seq_len: int | None,
    context: int | None,
    packing: str | None,
    json_output: bool,
) -> None:
    """`pilestore sample --view train|eval`: sample idx of the matching index, decoded."""
    import numpy as np
    from rich.text import Text

    from ..samples import SAMPLES_DIR, SampleIndex
    from ..tokenizer import Tokenizer
    from ..tokens import find_view

    view = find_view(store, tokenizer_path)
    pattern = f"{kind}-L{seq_len or '*'}-C{context or '*'}" + (f"-{packing or '*'}" if kind == "train" else "")
    names = sorted(p.name.removesuffix(".json") for p in (view.folder / SAMPLES_DIR).glob(f"{pattern}.json"))
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise PilestoreError(
            f"{len(names)} {kind} indexes match {pattern} ({found}); pass --seq-len/--context"
            + ("/--packing" if kind == "train" else "")
            + " or build one with `pilestore index`"
        )
    index = SampleIndex(view, names[0])
    try:
        sample = index[idx]
    except IndexError as err:
        raise click.BadParameter(str(err), param_hint="--idx") from err
    if json_output:
        ui.emit_json(
            {
                "idx": idx,
                "index": names[0],
                "input_ids": sample.input_ids.tolist(),
                "labels": sample.labels.tolist(),
                "position_ids": sample.position_ids.tolist(),
                "doc_lengths": sample.doc_lengths.tolist(),
                "spans": sample.spans,
                "n_bytes": sample.n_bytes,
            }
        )
        return
    tokenizer = Tokenizer(view.folder / "tokenizer.model")
    ui.out.print(
        f"# sample {idx:,} of {len(index):,} in {names[0]} | {len(sample.spans)} spans | "
        f"{int((sample.labels != -100).sum()):,} targets | {sample.n_bytes:,} bytes",
        markup=False,
    )
    text = Text()
    x = np.concatenate((sample.input_ids, sample.labels[-1:]))
    at = 0
    for span in sample.spans:
        n = span["eod"] + span["context"] + span["target"]
        ids = x[at : at + n]
        if span["eod"]:
            text.append("[eod]", style="dim cyan")
        text.append(tokenizer.decode(ids[span["eod"] : n - span["target"]]), style="dim")
        text.append(tokenizer.decode(ids[n - span["target"] :]), style="bold")
        text.append(f"  <doc {span['doc']}>\n", style="dim cyan")
        at += n
    ui.out.print(text)
