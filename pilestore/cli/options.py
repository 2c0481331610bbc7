"""Options shared by several commands."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..cluster import EXECUTORS

F = TypeVar("F", bound=Callable[..., Any])

store_option = click.option(
    "--store",
    "store_dir",
    envvar="PILESTORE_STORE",
    default="pile.store",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Store directory (or set $PILESTORE_STORE).",
)
json_option = click.option("--json", "json_output", is_flag=True, help="Print the result as JSON on stdout.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar or notes.")


_FORCE = "pilestore.force"  # ctx.meta key: --force, read by writable_file
_STDOUT_OK = "pilestore.stdout_ok"  # ctx.meta key: this command's --out may be "-"


def writable_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """An output file whose folder exists and is writable, and that does not exist unless --force was given:
    checked before any work is done."""
    if value is not None and str(value) == "-":
        if ctx.meta.get(_STDOUT_OK):
            return value
        raise click.BadParameter(
            "this command writes a file, not stdout: name one (./- for a file called -)", ctx, param
        )
    if value is not None:
        folder = value.parent if str(value.parent) else Path(".")
        if not folder.is_dir():
            raise click.BadParameter(f"{folder} does not exist; create it first", ctx, param)
        if not os.access(folder, os.W_OK):
            raise click.BadParameter(f"{folder} is not writable", ctx, param)
        if value.exists() and not ctx.meta.get(_FORCE):
            raise click.BadParameter(f"{value} exists; pass --force to replace it", ctx, param)
    return value


def out_file_option(help_text: str, stdout_ok: bool = False) -> Callable[[F], F]:
    """--out FILE, required, its folder checked writable before any work; an existing FILE only with --force
    (the file is replaced once the new one is complete); "-" for standard output where `stdout_ok`."""

    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        ctx.meta[_FORCE], ctx.meta[_STDOUT_OK] = value, stdout_ok
        return value

    def decorate(fn: F) -> F:
        fn = click.option(
            "--force",
            is_flag=True,
            is_eager=True,  # parsed before --out, whose check needs it
            expose_value=False,
            callback=remember,
            help="Replace --out if it exists (only once the new file is complete).",
        )(fn)
        return click.option(
            "--out",
            required=True,
            type=click.Path(dir_okay=False, path_type=Path),
            callback=writable_file,
            help=help_text,
        )(fn)

    return decorate


def workers_option(help_text: str) -> Callable[[F], F]:
    """--workers/-j, at least 1; each command says what a worker is."""
    return click.option("--workers", "-j", default=1, show_default=True, type=click.IntRange(min=1), help=help_text)


def executor_options(unit: str) -> Callable[[F], F]:
    """--executor local|ray and --address: where the per-`unit` jobs run."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--address",
            default=None,
            help="With --executor ray: the cluster to join (e.g. ray://head:10001 or auto)  [default: a Ray "
            "cluster this node belongs to, else a local Ray instance]",
        )(fn)
        return click.option(
            "--executor",
            type=click.Choice(EXECUTORS),
            default="local",
            show_default=True,
            help=f"local: processes or threads here; ray: one Ray task per {unit} (the store must be on storage "
            "every node sees; needs the ray extra).",
        )(fn)

    return decorate


def parse_weights(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    """--weight 'Wikipedia (en)=3' (repeatable) -> {"Wikipedia (en)": 3.0}."""
    weights = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        try:
            weights[name] = float(number)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise click.BadParameter(f"{value!r}: expected SUBSET=EPOCHS, e.g. 'Wikipedia (en)=3'", ctx, param)
    return weights


def parse_ranges(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[tuple[int, int]]:
    """--exclude START:STOP (repeatable) -> [(START, STOP)]."""
    out = []
    for value in values:
        start, sep, stop = value.partition(":")
        if not sep or not start.isdigit() or not stop.isdigit() or int(stop) < int(start):
            raise click.BadParameter(f"{value!r}: expected START:STOP sample positions, e.g. 64000:70400", ctx, param)
        out.append((int(start), int(stop)))
    return out
