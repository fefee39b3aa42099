"""Run the ``ngraph`` CLI in this process (no interpreter start-up per call) and capture it."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, cwd: str | os.PathLike | None = None) -> Result:
    from nngraph.cli import main

    out, err = io.StringIO(), io.StringIO()
    before = Path.cwd()
    filters = warnings.filters[:]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in args])
    finally:
        os.chdir(before)
        logging.disable(logging.NOTSET)       # the CLI silences logging and warnings unless --debug
        warnings.filters[:] = filters
    return Result(rc, out.getvalue(), err.getvalue())
