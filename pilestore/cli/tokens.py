"""`pilestore train-tokenizer`, `tokenize` and `index`: the token side of a store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .options import (
    executor_options,
    json_option,
    out_file_option,
    parse_weights,
    quiet_option,
    store_option,
    workers_option,
)
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
@out_file_option("Model file to write.")
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
@quiet_option
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
    quiet: bool,
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
    ui = Ui(json_output=json_output, quiet=quiet)
    pieces = extra["vocab_size"]  # --option vocab_size=... overrides --vocab-size
    pieces = f"{pieces:,}" if isinstance(pieces, int) else pieces
    labels = {"sample": "reading sampled documents", "train": f"training sentencepiece ({pieces} pieces)"}
    with ui.stages() as start:
        result = run_train(
            open_store(store_dir),
            out,
            TrainSettings(sample_docs=sample_docs, sample_mb=sample_mb, seed=seed, options=extra),
            on_stage=lambda stage, total: start(labels[stage], total),
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
@workers_option("Threads that encode documents in parallel (per Ray task with --executor ray).")
@executor_options("partition")
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
    executor: str,
    address: str | None,
    json_output: bool,
    quiet: bool,
) -> None:
    """Tokenize every document of the store, then build its eval and train sample indexes.

    Resumable: partitions already tokenized with this tokenizer are kept. After sources were added to the
    store, this tokenizes their documents and rebuilds every sample index of the view with them.

    \b
    Example:
        pilestore tokenize --store pile.store --tokenizer tok.model --seq-len 2048 --context 512 --workers 2
        pilestore tokenize --store /shared/pile.store --tokenizer tok.model --executor ray --address auto
    """
    from .. import open as open_store
    from ..indexes import build_indexes, rebuild_behind
    from ..tokens import TokenView, subset_stats
    from ..tokens import tokenize as run_tokenize

    check_shape(seq_len, context)
    ui = Ui(json_output=json_output, quiet=quiet)
    if executor == "ray":
        ui.reserve_stdout()
    store = open_store(store_dir)
    with ui.docs_progress("tokenize", len(store)) as advance:
        result = run_tokenize(
            store, tokenizer_path, threads=workers, on_docs=advance, executor=executor, address=address
        )
    view = TokenView(Path(result["view"]))
    with ui.stages() as start:
        infos = build_indexes(view, store, seq_len, context, packing, val_fraction, on_stage=start)
        infos += rebuild_behind(view, store, start)  # the view's other indexes, made before this run added partitions
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
@quiet_option
def index(
    store_dir: Path,
    tokenizer_path: Path | None,
    seq_len: int,
    context: int,
    packing: str,
    val_fraction: float | None,
    json_output: bool,
    quiet: bool,
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
    ui = Ui(json_output=json_output, quiet=quiet)
    store = open_store(store_dir)
    with ui.stages() as start:
        view = find_view(store, tokenizer_path)
        infos = build_indexes(view, store, seq_len, context, packing, val_fraction, on_stage=start)
    if json_output:
        ui.emit_json(infos)
    else:
        _print_indexes(ui, infos)


def _open_index(store: Any, kind: str, fields: tuple[Any, ...]) -> Any:
    """The SampleIndex that --tokenizer/--seq-len/--context/--packing/--split/--val-fraction pick."""
    from ..samples import SampleIndex, find_index
    from ..tokens import find_view

    tokenizer_path, seq_len, context, packing, split, val_fraction = fields
    if split != "all" and val_fraction is None:
        raise click.UsageError(f"--split {split} needs --val-fraction (as given to `pilestore index`)")
    view = find_view(store, tokenizer_path)
    return SampleIndex(view, find_index(view, kind, seq_len, context, packing, split, val_fraction))


@click.command()
@store_option
@tokenizer_option
@click.option("--view", "kind", type=click.Choice(["train", "eval"]), default="train", show_default=True)
@click.option("--seq-len", type=int, default=None, help="Which index (when there are several).")
@click.option("--context", type=int, default=None, help="Which index (when there are several).")
@click.option("--packing", type=click.Choice(["bestfit", "greedy"]), default=None, help="With --view train.")
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True)
@click.option("--val-fraction", type=float, default=None, help="With --split train|val: the held-out fraction.")
@click.option(
    "--weight", "weights", multiple=True, callback=parse_weights, help="SUBSET=EPOCHS, as given to PileDataset."
)
@click.option("--subset", "subsets", multiple=True, help="Keep only these subsets (repeatable).")
@click.option("--mixture-seed", type=int, default=0, show_default=True)
@json_option
def mixture(
    store_dir: Path,
    tokenizer_path: Path | None,
    kind: str,
    seq_len: int | None,
    context: int | None,
    packing: str | None,
    split: str,
    val_fraction: float | None,
    weights: dict[str, float],
    subsets: tuple[str, ...],
    mixture_seed: int,
    json_output: bool,
) -> None:
    """Show the proportions an epoch of a weighted mixture realises, per subset (exact, from the index).

    Weights are epochs per subset (unnamed subsets: 1), as PileDataset(weights=...) takes them.

    \b
    Example:
        pilestore mixture --store pile.store --weight 'Wikipedia (en)=3' --weight 'PubMed Central=2'
    """
    from rich.table import Table

    from .. import open as open_store
    from ..mixture import Mixture

    index = _open_index(open_store(store_dir), kind, (tokenizer_path, seq_len, context, packing, split, val_fraction))
    try:
        mix = Mixture.of(index.subset_names, index.subset_samples, weights, list(subsets) or None, mixture_seed)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--weight/--subset") from err
    rows = mix.realised(index.samples["by_subset"], index.samples["n_bytes"])
    ui = Ui(json_output=json_output)
    if json_output:
        ui.emit_json({"index": index.info["name"], "samples_per_epoch": len(mix), "subsets": rows})
        return
    table = Table(title=f"{index.info['name']}: {len(mix):,} samples per epoch", title_justify="left")
    for name in ("subset", "weight", "samples", "per epoch", "MB per epoch", "share of bytes", "before weighting"):
        table.add_column(name, justify="left" if name == "subset" else "right")
    total_bytes = sum(r["bytes"] for r in rows) or 1
    for r in rows:
        table.add_row(
            r["subset"],
            f"{r['weight']:g}",
            f"{r['samples']:,}",
            f"{r['positions']:,}",
            f"{r['epoch_bytes'] / 1e6:,.2f}",
            f"{r['share_bytes']:.2%}",
            f"{r['bytes'] / total_bytes:.2%}",
        )
    ui.out.print(table)


def show_sample(ui: Ui, store: Any, idx: int, kind: str, fields: tuple[Any, ...], json_output: bool) -> None:
    """`pilestore sample --view train|eval`: sample idx of the matching index, decoded."""
    import numpy as np
    from rich.text import Text

    from ..tokenizer import Tokenizer

    index = _open_index(store, kind, fields)
    view, name = index.view, index.info["name"]
    try:
        sample = index[idx]
    except IndexError as err:
        raise click.BadParameter(str(err), param_hint="--idx") from err
    if json_output:
        ui.emit_json(
            {
                "idx": idx,
                "index": name,
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
        f"# sample {idx:,} of {len(index):,} in {name} | {len(sample.spans)} spans | "
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


def show_step(
    ui: Ui,
    store: Any,
    kind: str,
    fields: tuple[Any, ...],
    step: int,
    global_batch: int,
    rank: int | None,
    order_options: dict[str, Any],
    mixture_seed: int,
) -> None:
    """`pilestore sample --step S --global-batch B`: the samples and documents of a training step."""
    from rich.table import Table

    from ..mixture import Mixture, sample_ids
    from ..sampler import EpochOrder

    index = _open_index(store, kind, fields)
    weights, subsets = order_options["weights"], order_options["subsets"]
    try:
        mixture = (
            Mixture.of(index.subset_names, index.subset_samples, weights, subsets, mixture_seed)
            if weights or subsets
            else None
        )
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--weight/--subset") from err
    world = order_options["world_size"]
    if rank is not None and rank >= world:
        raise click.BadParameter(f"--rank {rank} must be below --world-size {world}", param_hint="--rank")
    n = len(mixture) if mixture is not None else len(index)
    try:
        order = EpochOrder(n, world, order_options["seed"], exclude=tuple(order_options["exclude"]))
        epoch, counts, positions = order.step(step, global_batch)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--global-batch") from err
    ids = sample_ids(index.samples["by_subset"], mixture, positions)
    ranks = counts % world
    rows = []
    for count, r, position, sample_id in zip(
        counts.tolist(), ranks.tolist(), positions.tolist(), ids.tolist(), strict=True
    ):
        if rank is not None and r != rank:
            continue
        spans = [{**span, "subset": index.subset_names[span["subset"]]} for span in index[sample_id].spans]
        rows.append({"rank": r, "count": count, "position": position, "sample": sample_id, "spans": spans})
    result = {"index": index.info["name"], "step": step, "epoch": epoch, "global_batch": global_batch, "samples": rows}
    if ui.json_output:
        ui.emit_json(result)
        return
    table = Table(
        title=f"step {step:,} (epoch {epoch}) of {index.info['name']}: {len(rows)} samples", title_justify="left"
    )
    for name in ("rank", "sample", "documents (doc:start+targets subset)"):
        table.add_column(name, justify="left" if name.startswith("documents") else "right")
    for row in rows:
        docs = "; ".join(f"{s['doc']}:{s['start']}+{s['target']} {s['subset']}" for s in row["spans"])
        table.add_row(str(row["rank"]), f"{row['sample']:,}", docs)
    ui.out.print(table)
