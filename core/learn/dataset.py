"""A dataset of networks: a folder of model files and ``labels.csv``.

``labels.csv`` has a ``model`` column (path relative to the folder), an optional ``split``
column (train/val/test) and any target columns. Models are converted in parallel with a progress
bar and cached as ``.ngraph`` files under ``<folder>/.nngraph-cache/`` (keyed by path, size and
modification time); a model that fails to convert is reported and skipped, not fatal.

A dataset can be read in shards (``shard=(i, n)``, ``shard_rows``): then only the shard's model files are
needed, checked and converted — one ``.nngraph-cache`` per shard when each machine holds its own — and the
other rows are entries without a graph (their labels are still known). Distributed training reads shard
``(rank, world)`` on every rank.
"""
from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, NNGraphError
from ..graph.ir import NeuralGraph


@dataclass
class Entry:
    path: Path
    row: dict
    graph: NeuralGraph | None = None


@dataclass
class ModelDataset:
    root: Path
    entries: list[Entry]
    failed: list[tuple[str, str]] = field(default_factory=list)

    def split(self, name: str | None) -> list[Entry]:
        if name is None:
            return list(self.entries)
        name = name.strip().lower()             # as read_labels reads the split column
        if not any("split" in e.row for e in self.entries):
            return list(self.entries) if name in ("train", "all") else []
        return [e for e in self.entries if e.row.get("split", "train") == name]

    def targets(self, column: str) -> list[str]:
        return [e.row.get(column, "") for e in self.entries]


def shard_rows(rows: list[dict], shard: tuple[int, int] | None) -> list[bool]:
    """Which rows of ``labels.csv`` shard ``(i, n)`` holds: the k-th row of each split goes to shard k mod n,
    so every split is spread evenly over the shards (and the shards of a distributed run take equal steps)."""
    if shard is None:
        return [True] * len(rows)
    i, n = shard
    if not 0 <= i < n:
        raise InputError(f"shard {i}/{n}: needs 0 <= i < n")
    seen: dict[str, int] = {}
    held = []
    for row in rows:
        split = row.get("split", "train")
        held.append(seen.get(split, 0) % n == i)
        seen[split] = seen.get(split, 0) + 1
    return held


#: The splits training and evaluation know (``labels.csv``'s ``split`` column; other names are kept for
#: ``ngraph evaluate --split NAME`` but train on nothing).
SPLITS = ("train", "val", "test")


def read_labels(folder: str | os.PathLike) -> list[dict]:
    """The rows of ``folder/labels.csv`` (checked: a ``model`` column). Written by hand or by a spreadsheet,
    a CSV may carry a byte-order mark, spaces around its column names and capitalized split names
    (``Test``): all read as meant, so no row silently falls out of its split."""
    labels = Path(folder) / "labels.csv"
    if not labels.is_file():
        raise InputError(f"{folder}: no labels.csv (a 'model' column with relative paths, optional 'split', targets)")
    try:
        with open(labels, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise InputError(f"{labels}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise InputError(f"{labels}: not a CSV file ({e})") from None
    if "model" not in (reader.fieldnames or []):
        raise InputError(f"{labels}: needs a 'model' column")
    if not rows:
        raise InputError(f"{labels}: has a header but no rows (one per model)")
    for row in rows:
        row.pop(None, None)                 # cells past the header: no column to name them
        if "split" in row:                  # a short row has None there
            row["split"] = (row["split"] or "").strip().lower()
    return rows


def unknown_splits(rows) -> dict[str, int]:
    """How many rows (entries or ``labels.csv`` rows) name each split outside :data:`SPLITS`: training uses
    none of them, so ``ngraph train`` says so rather than dropping them silently."""
    counts: dict[str, int] = {}
    for row in rows:
        row = getattr(row, "row", row)
        if "split" in row and row["split"] not in SPLITS:
            counts[row["split"]] = counts.get(row["split"], 0) + 1
    return counts


def _cache_path(root: Path, model: Path) -> Path:
    st = model.stat()
    key = hashlib.sha1(f"{model.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return root / ".nngraph-cache" / f"{key}.ngraph"


def _convert_one(root: str, rel: str) -> tuple[str, str | None]:
    from ..api import convert
    from ..graph.fileformat import save
    model = Path(root) / rel
    cache = _cache_path(Path(root), model)
    if cache.exists():
        return rel, None
    try:
        save(convert(model), cache)
        return rel, None
    except NNGraphError as e:
        return rel, str(e)
    except Exception as e:  # noqa: BLE001 - one bad model must not stop the dataset
        return rel, f"{type(e).__name__}: {e}"


def load_dataset(folder: str | os.PathLike, *, workers: int | None = None, progress: bool = True,
                 shard: tuple[int, int] | None = None, status=None) -> ModelDataset:
    """With ``shard=(i, n)`` only that shard's models are read; the other rows are entries with ``graph=None``.
    ``progress``: a progress bar while converting; ``status(line)``: progress lines instead (not on a
    terminal; :class:`~.progress.Ticker`)."""
    root = Path(folder)
    rows = read_labels(root)
    root_resolved = root.resolve()
    entries, failed, local = [], [], []
    for row, held in zip(rows, shard_rows(rows, shard)):
        path = (root / row["model"]).resolve()
        if not held:
            entries.append(Entry(path, row))            # another shard's: neither read nor checked here
        elif root_resolved not in path.parents:
            failed.append((row["model"], "path outside the dataset folder"))
        elif not path.is_file():
            failed.append((row["model"], "no such file"))
        else:
            entries.append(Entry(path, row))
            local.append(entries[-1])
    (root / ".nngraph-cache").mkdir(exist_ok=True)
    todo = [e for e in local if not _cache_path(root, e.path).exists()]
    errors: dict[str, str] = {}
    if todo:
        from .progress import tracked
        workers = workers or min(len(todo), os.cpu_count() or 1)
        with tracked(f"converting {len(todo)} models", len(todo), progress, status) as advance:
            if workers > 1:
                with ProcessPoolExecutor(workers) as pool:
                    futures = [pool.submit(_convert_one, str(root), str(e.path.relative_to(root_resolved))) for e in todo]
                    for fut in as_completed(futures):
                        rel, err = fut.result()
                        if err:
                            errors[rel] = err
                        advance()
            else:
                for e in todo:
                    rel, err = _convert_one(str(root), str(e.path.relative_to(root_resolved)))
                    if err:
                        errors[rel] = err
                    advance()
    from ..graph.fileformat import load
    local_ids, kept = {id(e) for e in local}, []
    for e in entries:
        if id(e) in local_ids:
            rel = str(e.path.relative_to(root_resolved))
            if rel in errors:
                failed.append((e.row["model"], errors[rel]))
                continue
            e.graph = load(_cache_path(root, e.path))
        kept.append(e)
    return ModelDataset(root, kept, failed)
