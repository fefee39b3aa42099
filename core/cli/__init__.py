"""The ``ngraph`` command line. Exit codes: 0 ok, 1 failure, 2 usage, 3 plugin problem,
4 unsupported or corrupt input. Errors are one line on stderr; ``--debug`` adds the traceback.

One module per command group (``convert``: one model; ``learn``: populations; ``align``: several
models of one architecture); each registers its commands on the group in ``app``. Plugins add
commands through the ``nngraph_commands`` hook.
"""
from __future__ import annotations

import sys
import traceback

import click

from ..errors import NNGraphError, missing_extra
from . import align, convert, learn  # noqa: F401  (importing a command module registers its commands)
from .app import cli, err

__all__ = ["cli", "main", "entry"]


def _add_plugin_commands() -> None:
    from ..loader import registry

    for spec in registry().commands.values():
        if spec.name not in cli.commands:
            cli.add_command(spec.command, spec.name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        _add_plugin_commands()
        cli.main(argv, prog_name="ngraph", standalone_mode=False)
        return 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        err.print("aborted")
        return 1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except NNGraphError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"ngraph: error: {e}", err=True)
        return e.exit_code
    except MemoryError:
        click.echo("ngraph: error: out of memory", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, unless --debug
        if debug:
            traceback.print_exc()
        extra = missing_extra(e)
        if extra is not None:               # base install: say which extra to install
            click.echo(f"ngraph: error: {extra}", err=True)
            return extra.exit_code
        click.echo(f"ngraph: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        return 1


def entry() -> None:
    sys.exit(main())

