"""`pilestore ingest`: add Pile shards to a store."""

from __future__ import annotations

from pathlib import Path

import click

from .options import executor_options, json_option, quiet_option, store_option, workers_option
from .ui import Ui, subset_table


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@store_option
@workers_option("Sources ingested at once, each in its own process.")
@click.option(
    "--threads", default=None, type=click.IntRange(min=1), help="zstd threads per worker  [default: cores / workers]"
)
@click.option(
    "--level",
    default=3,
    show_default=True,
    type=click.IntRange(1, 22),
    help="zstd level of documents of --small-bytes or more (of every document when --small-level is not above it).",
)
@click.option(
    "--small-level",
    default=5,
    show_default=True,
    type=click.IntRange(1, 22),
    help="zstd level of shorter documents (never below --level). 5 finds more of a small document in its "
    "dictionary than 3: 1.4% smaller on the sample corpus for 7-13% more ingest CPU; --small-level 3 compresses "
    "every document at level 3.",
)
@click.option(
    "--small-bytes",
    default=16 * 1024,
    show_default=True,
    type=click.IntRange(min=0),
    help="Documents shorter than this (UTF-8 bytes) compress at --small-level.",
)
@click.option(
    "--dict-size",
    default=112 * 1024,
    show_default=True,
    type=click.IntRange(min=0),
    help="Bytes per trained zstd dictionary; 0 = no dictionaries.",
)
@click.option("--strict", is_flag=True, help="Fail on the first bad line instead of counting and skipping it.")
@executor_options("source")
@json_option
@quiet_option
def ingest(
    sources: tuple[Path, ...],
    store_dir: Path,
    workers: int,
    threads: int | None,
    level: int,
    small_level: int,
    small_bytes: int,
    dict_size: int,
    strict: bool,
    executor: str,
    address: str | None,
    json_output: bool,
    quiet: bool,
) -> None:
    """Add the documents of Pile SOURCES (.jsonl.zst or .jsonl) to a store.

    Each source becomes one partition, built in parallel with --workers. The store changes only
    when every source is done; re-run the same command after a failure or Ctrl-C to finish.

    \b
    Example:
        pilestore ingest 00.jsonl.zst 01.jsonl.zst --store pile.store --workers 2
        pilestore ingest /shared/pile/*.jsonl.zst --store /shared/pile.store --executor ray --address auto
    """
    from ..codec import CompressionSettings
    from ..ingest import ingest as run_ingest

    ui = Ui(json_output=json_output, quiet=quiet)
    if executor == "ray":
        ui.reserve_stdout()
    try:
        settings = CompressionSettings(
            level=level, small_level=small_level, small_bytes=small_bytes, dict_size=dict_size
        )
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    with ui.bytes_progress("ingest") as (start, advance):
        report = run_ingest(
            list(sources),
            store_dir,
            settings=settings,
            workers=workers,
            threads=threads,
            strict=strict,
            on_progress=advance,
            on_start=start,
            executor=executor,
            address=address,
        ).as_dict()
    if json_output:
        ui.emit_json(report)
        return
    for name in report["already_in_store"]:
        ui.note(f"{name}: already in {store_dir}, skipped")
    if report["documents"] or report["sources"]:
        title = (
            f"{report['documents']:,} documents ingested in {report['seconds']:.1f} s "
            f"({report['text_mb_per_s']} MB/s of text)"
        )
        ui.out.print(subset_table(title, report["subsets"], total=report))
    skipped = report["skipped"]
    if skipped:
        total = sum(skipped.values())
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in sorted(skipped.items()))
        ui.warn(f"skipped {total:,} bad lines ({reasons}); first ones:")
        for example in report["skipped_examples"]:
            ui.err.print(f"  {example}", markup=False)


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@store_option
@json_option
@quiet_option
def merge(sources: tuple[Path, ...], store_dir: Path, json_output: bool, quiet: bool) -> None:
    """Add the partitions of other stores to a store, without recompressing or re-tokenizing.

    Documents keep the order of the stores given (after the target's own); tokenized views that every store
    has are carried over and their sample indexes rebuilt.

    \b
    Example:
        pilestore merge node0.store node1.store --store pile.store
    """
    from ..merge import merge as run_merge

    ui = Ui(json_output=json_output, quiet=quiet)
    stores = f"{len(sources)} store{'s' if len(sources) > 1 else ''}"
    with ui.stages() as start:  # the files, then each sample index rebuilt
        start(f"merging {stores} (files linked or copied, then checked)", None)
        result = run_merge(list(sources), store_dir, on_stage=start)
    if json_output:
        ui.emit_json(result)
        return
    ui.out.print(
        f"{result['partitions_added']} partitions added: {result['documents']:,} documents in {result['store']}"
        + (f"; skipped (already there): {', '.join(result['skipped_sources'])}" if result["skipped_sources"] else "")
    )
    for view in result["views"]:
        ui.out.print(f"view {view['view']}: {view['tokens']:,} tokens, indexes {', '.join(view['indexes'])}")
