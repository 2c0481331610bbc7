"""Commands that read a store: sample, info, verify, export. None of them imports torch or numba."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .options import json_option, out_file_option, parse_ranges, parse_weights, quiet_option, store_option
from .ui import Ui, subset_table


@click.command()
@click.option("--idx", type=int, default=None, help="Document (or sample) index; negative counts from the end.")
@store_option
@click.option(
    "--view",
    "view_kind",
    type=click.Choice(["doc", "train", "eval"]),
    default="doc",
    show_default=True,
    help="A document, or a training / evaluation sample of the tokenized view.",
)
@click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --view: which tokenized view, when the store has several.",
)
@click.option("--seq-len", type=int, default=None, help="With --view: which index (when there are several).")
@click.option("--context", type=int, default=None, help="With --view: which index (when there are several).")
@click.option("--packing", type=click.Choice(["bestfit", "greedy"]), default=None, help="With --view train.")
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True)
@click.option("--val-fraction", type=float, default=None, help="With --split train|val: the held-out fraction.")
@click.option("--step", type=click.IntRange(min=0), default=None, help="Show what this training step saw.")
@click.option("--global-batch", type=click.IntRange(min=1), default=None, help="With --step: samples per step.")
@click.option("--rank", type=click.IntRange(min=0), default=None, help="With --step: only this rank's samples.")
@click.option("--world-size", type=click.IntRange(min=1), default=1, show_default=True, help="With --step.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --step: the sampler's seed.")
@click.option(
    "--weight",
    "weights",
    multiple=True,
    callback=parse_weights,
    help="With --step: a mixture weight SUBSET=EPOCHS, as given to PileDataset (repeatable).",
)
@click.option("--subset", "subsets", multiple=True, help="With --step: PileDataset(subsets=...) (repeatable).")
@click.option("--mixture-seed", type=int, default=0, show_default=True, help="With --weight/--subset.")
@click.option("--exclude", multiple=True, callback=parse_ranges, help="With --step: excluded START:STOP (repeatable).")
@json_option
def sample(
    idx: int | None,
    store_dir: Path,
    view_kind: str,
    tokenizer_path: Path | None,
    seq_len: int | None,
    context: int | None,
    packing: str | None,
    split: str,
    val_fraction: float | None,
    step: int | None,
    global_batch: int | None,
    rank: int | None,
    world_size: int,
    seed: int,
    weights: dict[str, float],
    subsets: tuple[str, ...],
    mixture_seed: int,
    exclude: list[tuple[int, int]],
    json_output: bool,
) -> None:
    """Print one document or sample of the store, or the samples and documents a training step saw.

    --step S --global-batch B gives the samples of step S of a run with PileSampler (seed, exclusions and
    the PileDataset's split and weights as given here), and the documents they were made of; any world
    size sees the same samples at a step, and --rank R --world-size W narrows to one rank's share.

    \b
    Example:
        pilestore sample --idx 12345 --store pile.store
        pilestore sample --idx -1 --json | jq .meta
        pilestore sample --idx 7 --view train --json | jq .n_bytes
        pilestore sample --step 1200 --global-batch 512 --rank 3 --world-size 8
    """
    from .. import open as open_store
    from ..document import dump_json, encode_text

    if (idx is None) == (step is None):
        raise click.UsageError("give --idx N (a document or sample) or --step S --global-batch B (a training step)")
    store = open_store(store_dir)
    index_fields = (tokenizer_path, seq_len, context, packing, split, val_fraction)
    if step is not None:
        from .tokens import show_step

        if global_batch is None:
            raise click.UsageError("--step needs --global-batch (samples per step over all ranks)")
        kind = "train" if view_kind == "doc" else view_kind
        order = {
            "seed": seed,
            "world_size": world_size,
            "exclude": exclude,
            "weights": weights or None,
            "subsets": list(subsets) or None,
        }
        show_step(Ui(json_output=json_output), store, kind, index_fields, step, global_batch, rank, order, mixture_seed)
        return
    if view_kind != "doc":
        from .tokens import show_sample

        show_sample(Ui(json_output=json_output), store, idx, view_kind, index_fields, json_output)
        return
    try:
        doc = store[idx]
    except IndexError as err:
        raise click.BadParameter(str(err), param_hint="--idx") from err
    if json_output:
        record = {"idx": doc.idx, **doc.to_record()}
        sys.stdout.buffer.write(dump_json(record) + b"\n")
        return
    nbytes = len(encode_text(doc.text))
    header = f"# document {doc.idx:,} of {len(store):,} | {doc.subset} | {nbytes:,} bytes"
    if doc.meta and set(doc.meta) != {"pile_set_name"}:
        header += f" | meta {dump_json(doc.meta).decode()}"
    out = sys.stdout.buffer
    out.write(header.encode("utf-8", "backslashreplace") + b"\n")
    out.write(doc.text.encode("utf-8", "backslashreplace"))  # a lone surrogate shows as \ud83d; --json is exact
    if not doc.text.endswith("\n"):
        out.write(b"\n")


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".staging" not in p.parts)


def _info(store: Any) -> dict[str, Any]:
    from ..codec import small_level_of
    from ..manifest import subset_totals, with_ratios
    from ..samples import describe_views

    per_subset = with_ratios(subset_totals(store.manifest["partitions"]))
    source_bytes = sum(p["source"]["size"] for p in store.manifest["partitions"])
    disk = _disk_bytes(store.path)
    text = sum(v["text_bytes"] for v in per_subset.values())
    return {
        "store": str(store.path),
        "format_version": store.manifest["format_version"],
        "documents": len(store),
        "text_bytes": text,
        "disk_bytes": disk,
        "source_bytes": source_bytes,
        "ratio_text_to_disk": round(text / disk, 3) if disk else None,
        "disk_to_source": round(disk / source_bytes, 4) if source_bytes else None,
        "subsets": per_subset,
        "partitions": [
            {
                "id": p["id"],
                "source": p["source"]["name"],
                "documents": p["documents"],
                "text_bytes": p["text_bytes"],
                "source_bytes": p["source"]["size"],
                "stored_bytes": p["stored_bytes"],
                "zstd_level": p["compression"]["level"],
                "zstd_small_level": small_level_of(p["compression"]),
                "small_bytes": p["compression"]["small_bytes"],
                "skipped_lines": sum(p["skipped"].values()),
                "created": p["created"],
            }
            for p in store.manifest["partitions"]
        ],
        "views": describe_views(store.path, store.num_partitions),
        "created": store.manifest["created"],
        "updated": store.manifest["updated"],
    }


@click.command()
@store_option
@json_option
def info(store_dir: Path, json_output: bool) -> None:
    """Show documents, sizes and compression ratios per subset and per source, and the tokenized views.

    Each view is listed with its sample indexes, and marked where it is behind the store (sources added since
    it was tokenized) or an index is behind its view, with the command that catches up.

    \b
    Example:
        pilestore info --store pile.store
        pilestore info --json | jq .subsets
    """
    from rich.table import Table

    from .. import open as open_store

    ui = Ui(json_output=json_output)
    data = _info(open_store(store_dir))
    if json_output:
        ui.emit_json(data)
        return
    title = (
        f"{data['store']}: {data['documents']:,} documents, {data['disk_bytes'] / 1e6:,.1f} MB on disk "
        f"({data['disk_to_source']}x the sources)"
    )
    table = subset_table(title, data["subsets"])
    ui.out.print(table)
    sources = Table(title="partitions", title_justify="left")
    longest = max((len(p["source"]) for p in data["partitions"]), default=6)
    for name in ("id", "source", "documents", "source MB", "stored MB", "level", "skipped"):
        if name == "source":  # the column that tells partitions apart: whole names, the others narrow first
            sources.add_column(name, min_width=min(longest, 48))
        else:
            sources.add_column(name, justify="right", no_wrap=name == "level")
    for p in data["partitions"]:
        sources.add_row(
            str(p["id"]),
            p["source"],
            f"{p['documents']:,}",
            f"{p['source_bytes'] / 1e6:,.1f}",
            f"{p['stored_bytes'] / 1e6:,.1f}",
            _level_cell(p),
            f"{p['skipped_lines']:,}",
        )
    ui.out.print(sources)
    _print_views(ui, data["views"])


def _level_cell(partition: dict[str, Any]) -> str:
    """'3', or '3 (5 < 16 KiB)' for a partition whose small documents have their own level."""
    small = partition["zstd_small_level"]
    if small is None:
        return str(partition["zstd_level"])
    size = partition["small_bytes"]
    under = f"{size // 1024} KiB" if size % 1024 == 0 else f"{size:,} B"
    return f"{partition['zstd_level']} ({small} < {under})"


def _print_views(ui: Ui, views: list[dict[str, Any]]) -> None:
    """A line per tokenized view and per sample index; what is behind the store says how to catch up."""
    from rich.markup import escape

    for view in views:
        if "error" in view:
            ui.out.print(f"view {view['view']}: [red]{escape(view['error'])}[/]")
            continue
        behind = "" if view["up_to_date"] else " [yellow](behind the store: run `pilestore tokenize`)[/]"
        ui.out.print(
            f"view {view['view']} ({view['tokenizer']}, {view['vocab_size']:,} pieces): {view['partitions']} "
            f"partitions, {view['documents']:,} documents, {view['tokens']:,} tokens{behind}"
        )
        for index in view["indexes"]:
            if "error" in index:
                ui.out.print(f"  index {index['name']}: [red]{escape(index['error'])}[/]")
                continue
            stale = "" if index["up_to_date"] else " [yellow](behind its view: rebuild with `pilestore index`)[/]"
            ui.out.print(f"  index {index['name']}: {index['samples']:,} samples{stale}")


@click.command()
@store_option
@json_option
@quiet_option
def verify(store_dir: Path, json_output: bool, quiet: bool) -> None:
    """Check every file hash and decompress every document against its checksum.

    Tokenized views are checked too: token ids, byte lengths, document tables and sample indexes against the
    sha256 recorded when they were written.

    Exits 1 and names each corrupt file and document if anything is wrong.

    \b
    Example:
        pilestore verify --store pile.store
    """
    from .. import open as open_store
    from ..verify import verify as run_verify

    ui = Ui(json_output=json_output, quiet=quiet)
    store = open_store(store_dir)
    with ui.docs_progress("verify", len(store)) as advance:
        report = run_verify(store, on_document=advance)
    if json_output:
        ui.emit_json(report.as_dict())
    elif report.ok:
        ui.out.print(f"ok: {report.documents_checked:,} documents in {store.num_partitions} partitions verified")
    else:
        for problem in report.problems:
            ui.err.print(problem, markup=False, style="red")
    if not report.ok:
        raise click.exceptions.Exit(1)


@click.command()
@store_option
@out_file_option(
    "Output file: zstd-compressed if it ends in .zst, else plain JSON lines; - for stdout.", stdout_ok=True
)
@click.option("--level", default=3, show_default=True, type=click.IntRange(1, 22), help="zstd level for .zst output.")
@json_option
@quiet_option
def export(store_dir: Path, out: Path, level: int, json_output: bool, quiet: bool) -> None:
    """Write every document back as Pile JSON lines, in store order.

    \b
    Example:
        pilestore export --store pile.store --out all.jsonl.zst
        pilestore export --store pile.store --out - | jq -r .meta.pile_set_name | sort | uniq -c
    """
    from .. import open as open_store
    from ..export import export as run_export
    from ..export import write_lines

    if str(out) == "-" and json_output:
        raise click.BadParameter("--json prints to stdout, where --out - writes the documents", param_hint="--json")
    ui = Ui(json_output=json_output, quiet=quiet)
    store = open_store(store_dir)
    with ui.docs_progress("export", len(store)) as advance:
        if str(out) == "-":
            count = write_lines(store, sys.stdout.buffer, advance)
            sys.stdout.buffer.flush()
            ui.note(f"wrote {count:,} documents to stdout")
            return
        count = run_export(store, out, level=level, on_document=advance)
    result = {"out": str(out), "documents": count, "bytes": out.stat().st_size}
    if json_output:
        ui.emit_json(result)
    else:
        ui.out.print(f"wrote {count:,} documents to {out} ({result['bytes'] / 1e6:,.1f} MB)")
