"""`pilestore` command line: a click group; each subcommand lives in its own module.

Exit status: 0 ok, 1 failure (a PilestoreError, printed as one line), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from ..errors import PilestoreError


class PilestoreGroup(click.Group):
    """Turns PilestoreError (and any OSError that escapes) into a one-line error (exit 1), Ctrl-C into 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PilestoreError as err:
            raise click.ClickException(str(err)) from err
        except BrokenPipeError:  # stdout's reader went away (`| head`, `| less` quit): click ends quietly
            raise
        except OSError as err:  # a file the command could not read or write: name it, no traceback
            where = f"{err.filename}: " if err.filename else ""
            raise click.ClickException(f"{where}{err.strerror or err}") from err
        except KeyboardInterrupt:
            click.echo("interrupted. Re-run the same command to finish: what it had completed is kept.", err=True)
            sys.exit(130)


@click.group(cls=PilestoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pilestore")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (to stderr).")
def cli(verbose: bool) -> None:
    """Turn Pile-format .jsonl.zst corpora into a compressed, random-access store.

    \b
    Example:
        pilestore ingest 00.jsonl.zst 01.jsonl.zst --store pile.store --workers 2
        pilestore sample --idx 12345 --store pile.store
        pilestore info --store pile.store
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def _register() -> None:
    from . import ingest as ingest_cmd
    from . import store as store_cmd
    from . import tokens as tokens_cmd

    cli.add_command(ingest_cmd.ingest)
    cli.add_command(ingest_cmd.merge)
    for command in (tokens_cmd.train_tokenizer, tokens_cmd.tokenize, tokens_cmd.index, tokens_cmd.mixture):
        cli.add_command(command)
    for command in (store_cmd.sample, store_cmd.info, store_cmd.verify, store_cmd.export):
        cli.add_command(command)


_register()


def main() -> None:
    # No command does linear algebra, but numpy's OpenBLAS starts a thread per core that spins for ~0.1 CPU s in
    # every process that imports numpy (7% of the CPU of ingesting the 38 MB sample corpus). Children inherit it.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    cli(prog_name="pilestore")
