"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

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
