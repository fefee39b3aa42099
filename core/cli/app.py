"""The ``ngraph`` group and what every command module shares: consoles, spinner, JSON output."""
from __future__ import annotations

import contextlib
import json
import logging
import warnings

import click
from rich.console import Console

from .. import __version__


def console(stderr: bool = False) -> Console:
    """Rich on a terminal; in a pipe or file no wrapping at 80 columns (paths stay whole)."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=100_000, soft_wrap=True)


err = console(stderr=True)
out = console()


def spinner(text: str, as_json: bool):
    """A spinner on an interactive stderr; nothing under --json or in a pipe."""
    return err.status(text, spinner="dots") if not as_json and err.is_terminal else contextlib.nullcontext()


def emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ngraph")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """nngraph: neural networks as neural graphs (neurons = nodes, weights = edges)."""
    ctx.ensure_object(dict)["debug"] = debug
    logging.disable(logging.NOTSET if debug else logging.CRITICAL)   # torch.export & co. log tracebacks
    if not debug:                       # and torch.load warns about pickle protocols: one line only
        warnings.simplefilter("ignore")
