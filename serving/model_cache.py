"""Model files from S3 on this host's disk, downloaded once and shared by every replica that needs them.

A directory (`predictor.model_cache`: a host directory or, on Compose, a named
volume, mounted into every replica) holds one entry per model version,
named by a hash of its S3 location:

    <cache>/<key>/files...          the version's objects, as they are in S3
    <cache>/<key>.json              its manifest: each object's size and ETag when it was downloaded
    <cache>/<key>.lock              held (flock) while one replica downloads or evicts it

A replica that needs a version takes its lock, compares the manifest with
S3's listing (sizes and ETags) and the files on disk (sizes), and downloads
only when they differ — a version overwritten in place in S3 is downloaded
again, a truncated file too. Others that need the same version meanwhile wait
on the lock and then find it there. Every use touches the manifest; beyond
`disk_cache_size` entries the least recently used are removed (a replica
that loaded one keeps it in memory; files are only read at load time).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("serving.models")


@dataclass(frozen=True)
class Fetched:
    path: Path  # the version's files
    downloaded: bool  # this call downloaded them (False: they were in the cache already)


class ModelCache:
    """`list_objects(location)` -> {relative path: (size, etag)}; `download(location, relative, target)`."""

    def __init__(
        self,
        root: Path,
        list_objects: Callable[[str], dict[str, tuple[int, str]]],
        download: Callable[[str, str, Path], None],
        limit: int | None = None,
    ) -> None:
        self.root = root
        self.list_objects = list_objects
        self.download = download
        self.limit = limit  # entries kept (disk_cache_size); None: all
        root.mkdir(parents=True, exist_ok=True)

    def fetch(self, location: str) -> Fetched:
        """The version at `location` on local disk: from the cache when it is whole and current."""
        key = hashlib.sha256(location.encode()).hexdigest()[:24]
        target, manifest = self.root / key, self.root / f"{key}.json"
        with _locked(self.root / f"{key}.lock"):
            wanted = self.list_objects(location)
            if not wanted:
                raise FileNotFoundError(f"{location} holds no files")
            if _whole(target, manifest, wanted, location):
                _touch(manifest)
                return Fetched(target, downloaded=False)
            partial = self.root / f"{key}.partial-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            for relative in sorted(wanted):
                destination = partial / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                self.download(location, relative, destination)
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
            record = {"location": location, "objects": {k: list(v) for k, v in wanted.items()}}
            temp = manifest.with_suffix(f".tmp-{os.getpid()}")
            temp.write_text(json.dumps(record, sort_keys=True))
            os.replace(temp, manifest)
            LOGGER.info(f"downloaded {location} into the model cache {target}")
        self._evict(keep=key)
        return Fetched(target, downloaded=True)

    def _evict(self, keep: str) -> None:
        if self.limit is None:
            return
        entries = sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for manifest in entries[: max(len(entries) - self.limit, 0)]:
            key = manifest.stem
            if key == keep:
                continue
            with _locked(self.root / f"{key}.lock"):
                shutil.rmtree(self.root / key, ignore_errors=True)
                manifest.unlink(missing_ok=True)
            LOGGER.info(f"model cache: removed {key} (disk_cache_size {self.limit})")


def _whole(target: Path, manifest: Path, wanted: dict[str, tuple[int, str]], location: str) -> bool:
    """The entry is the version S3 has now (same objects, sizes and ETags), every file there at its size."""
    try:
        record: Any = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("location") != location:
        return False
    known = {k: (int(v[0]), str(v[1])) for k, v in (record.get("objects") or {}).items()}
    if known != wanted:
        return False
    for relative, (size, _etag) in wanted.items():
        try:
            if (target / relative).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        now = time.time()
        os.utime(path, (now, now))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
