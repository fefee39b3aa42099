"""Writing output files safely: every file nngraph writes goes through :func:`atomic_output`.

A reader (or a crash, or a SIGKILL) must never see half a file, a typo in ``-o`` must not
create folders, and files get the permissions a plain ``open`` would give.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import InputError


def check_output(path: str | os.PathLike) -> Path:
    """Refuse an output path whose folder does not exist or that is a folder (exit 4): a typo in
    ``-o`` must not create directories nor write somewhere unexpected."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: output folder {str(parent)!r} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file path")
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` with the
    permissions a plain ``open`` would give (the umask, not mkstemp's 0600); on any failure it
    is removed, so a reader never sees half a file."""
    path = check_output(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
