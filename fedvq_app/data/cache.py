"""A per-host cache of client partitions: in-process memo + atomic files on disk.

In a deployment every ClientApp message is a fresh process, so a client that
rebuilt its share of the data on each message paid for loading the whole dataset,
importing the partitioners and partitioning, at every round. Here a partition is
computed once per host and read back afterwards:

- the key is a SHA-256 of everything that determines the arrays (dataset settings,
  partition settings, seed, number of partitions, partition id, the size and
  modification time of the files read, a format version), so changing any of them
  computes a new entry and never reads a stale one;
- files are written to a temporary name in the cache folder and renamed with
  ``os.replace`` (atomic on POSIX): SuperNodes on one host that miss at the same time
  both compute the same arrays and the last rename wins; a reader sees a whole file
  or none; an unreadable file is treated as a miss;
- the folder is ``$FEDVQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedvq``, else
  ``~/.cache/fedvq``, else (HOME not writable, as in some SuperNode containers) the
  temp folder; ``FEDVQ_CACHE_DIR=off`` keeps only the in-process memo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV = "FEDVQ_CACHE_DIR"
#: bump when the meaning of cached arrays changes (a new key, never a stale read)
FORMAT_VERSION = 1
_LOG = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


def cache_key(kind: str, parts: Mapping[str, Any]) -> str:
    """SHA-256 of ``kind`` and ``parts`` (JSON, sorted keys; non-JSON values by repr)."""
    payload = json.dumps(
        {"kind": kind, "version": FORMAT_VERSION, "libraries": library_versions(), **parts},
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@cache
def library_versions() -> dict[str, str]:
    """Versions of the libraries whose partitioning or loading a cached entry reflects (read, not imported)."""
    versions = {}
    for name in ("numpy", "scikit-learn", "flwr-datasets", "datasets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def file_fingerprint(path: str | os.PathLike) -> list[Any]:
    """Path, size and modification time of a file or folder the arrays are read from (None: absent)."""
    try:
        stat = os.stat(path)
    except OSError:
        return [str(path), None]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def cache_dir() -> Path | None:
    """The writable cache folder of this host (None: disk cache off)."""
    chosen = os.environ.get(CACHE_ENV, "")
    if chosen.lower() == "off":
        return None
    candidates = [Path(chosen).expanduser()] if chosen else []
    if os.environ.get("XDG_CACHE_HOME"):
        candidates.append(Path(os.environ["XDG_CACHE_HOME"]) / "fedvq")
    candidates += [Path("~/.cache/fedvq").expanduser(), Path(tempfile.gettempdir()) / f"fedvq-cache-{os.getuid()}"]
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    return None


class PartitionCache:
    """Arrays by key: an LRU memo in this process (at most ``memo_bytes``) in front of one ``.npz`` per key."""

    def __init__(self, memo_bytes: int = 128 * 2**20) -> None:
        self.memo_bytes = memo_bytes
        self._memo: OrderedDict[str, Arrays] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.hits = {"memory": 0, "disk": 0, "computed": 0}

    def get(
        self, kind: str, parts: Mapping[str, Any], compute: Callable[[], Arrays], disk: bool = True
    ) -> Arrays:
        """The cached arrays for (kind, parts), computing and storing them on a miss.

        ``disk=False`` keeps them in this process only (arrays that are one file read already).
        """
        key = cache_key(kind, parts)
        if key in self._memo:
            self._memo.move_to_end(key)
            self.hits["memory"] += 1
            return self._memo[key]
        folder = cache_dir() if disk else None
        path = folder / kind / f"{key}.npz" if folder is not None else None
        arrays = _read(path) if path is not None else None
        if arrays is not None:
            self.hits["disk"] += 1
        else:
            arrays = {name: np.asarray(value) for name, value in compute().items()}
            self.hits["computed"] += 1
            if path is not None:
                _write_atomically(path, arrays)
        self._memo[key] = arrays
        self._sizes[key] = sum(a.nbytes for a in arrays.values())
        while len(self._memo) > 1 and sum(self._sizes.values()) > self.memo_bytes:
            oldest, _ = self._memo.popitem(last=False)
            del self._sizes[oldest]
        return arrays

    def clear_memo(self) -> None:
        self._memo.clear()
        self._sizes.clear()


def _read(path: Path) -> Arrays | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as err:  # a damaged file is a miss; it is rewritten
        _LOG.warning("partition cache: ignoring unreadable %s (%s)", path, err)
        return None


def _write_atomically(path: Path, arrays: Arrays) -> None:
    """Write to a unique temporary file next to ``path``, then rename it over ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, **arrays)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as err:  # full or read-only disk: the run goes on with the memo alone
        _LOG.warning("partition cache: cannot write %s (%s)", path, err)


#: the process's cache (a Ray worker or ClientApp process serves many messages with it)
PARTITIONS = PartitionCache()
