"""Which files of a project go into its images and its version, and their digest.

`.stackignore` beside stack.yaml (the syntax of `.gitignore` and `.dockerignore`)
decides; the defaults below always apply, so logs, notebooks' checkpoints,
virtualenvs and our own `.stack/` never change a version nor reach an image.
The spec file itself stays out too: each API's own spec is hashed into its
version separately, so changing one API's replica bounds does not roll every
other API, and secrets written in stack.yaml do not land in images.

Hashing reads a file only when its size or mtime changed since the last run
(a cache in `.stack/cache/`): model weights beside stack.yaml are read once,
not on every `up`, `status` and `scale`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pathspec

from stack.atomic import write_json_atomic

IGNORE_FILE = ".stackignore"
DEFAULT_IGNORE = (
    ".stack/",
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    "*.py[co]",
    "*.log",
    ".ipynb_checkpoints/",
    ".venv/",
    "venv/",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    "node_modules/",
    ".DS_Store",
)
# What looks like a secret stays out of images and versions too (a line `!name` in .stackignore takes
# one back in, and `stack up` then warns); the API keys file (gateway.api_keys_file) always stays out.
SECRET_IGNORE = (
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.keytab",
    "secrets*",
    "credentials",
    "credentials.*",
    ".aws/",
    ".ssh/",
    ".docker/config.json",
    ".netrc",
    ".pypirc",
    ".npmrc",
    ".htpasswd",
    "id_rsa*",
    "id_ed25519*",
    "id_ecdsa*",
)
SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "apikey", "api_key", "private")
PRIVATE_KEY = b"PRIVATE KEY-----"
CACHE_FILE = ".stack/cache/file-hashes.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ProjectFiles:
    """The files of the project rooted at `root` that belong to its images."""

    root: Path
    spec_file: Path | None = None  # stack.yaml: never copied, never hashed as a file
    exclude: tuple[Path, ...] = ()  # more directories to leave out (a plan written inside the project)
    secrets: tuple[Path, ...] = ()  # files that never go in, whatever .stackignore says (the API keys file)

    def _spec(self) -> pathspec.GitIgnoreSpec:
        lines = [*DEFAULT_IGNORE, *SECRET_IGNORE]
        ignore = self.root / IGNORE_FILE
        if ignore.is_file():
            lines += ignore.read_text(errors="replace").splitlines()
        return pathspec.GitIgnoreSpec.from_lines(lines)

    def __iter__(self) -> Iterator[Path]:
        """Relative paths of every included file, sorted. A file that is a link counts only when it points to
        a file of the project that is itself included: a link never brings in a file from outside the project
        (`links_outside` lists those, which an image build refuses), nor an ignored or secret one."""
        return iter(self._walk()[0])

    def links_outside(self) -> list[tuple[Path, str]]:
        """(relative path, where it points) of every link among the project's files whose target is outside
        the project (or dangling, or a link loop)."""
        return self._walk()[1]

    def _walk(self) -> tuple[list[Path], list[tuple[Path, str]]]:
        spec = self._spec()
        root = self.root.resolve()
        spec_file = self.spec_file.resolve() if self.spec_file else None
        excluded = {p.resolve() for p in self.exclude}
        secrets = {p.resolve() for p in self.secrets}
        found: list[Path] = []
        outside: list[tuple[Path, str]] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            relative_dir = here.relative_to(self.root)
            kept = []
            for name in sorted(dirnames):
                rel = (relative_dir / name).as_posix()
                full = here / name
                # A virtualenv under any name (it has a pyvenv.cfg) is never part of the project.
                if (
                    spec.match_file(rel + "/")
                    or (full / "pyvenv.cfg").is_file()
                    or full.is_symlink()
                    or (excluded and full.resolve() in excluded)
                ):
                    continue
                kept.append(name)
            dirnames[:] = kept
            for name in sorted(filenames):
                full = here / name
                rel_path = relative_dir / name
                if spec.match_file(rel_path.as_posix()):
                    continue
                if full.is_symlink():
                    pointed = _link_target(full, root)
                    if pointed is None:
                        outside.append((rel_path, os.readlink(full)))
                        continue
                    # A link is what it points to: an ignored or secret file stays out under any name.
                    if spec.match_file(pointed.as_posix()) or _ignored_dir(spec, pointed):
                        continue
                if not full.is_file():
                    continue
                if spec_file is not None and full.resolve() == spec_file:
                    continue
                if secrets and full.resolve() in secrets:
                    continue
                found.append(rel_path)
        return sorted(found, key=lambda p: p.as_posix()), outside

    def suspicious(self) -> list[Path]:
        """Included files that look like secrets: a secret's name, or a private key inside."""
        found = []
        for relative in self:
            name = relative.name.lower()
            if any(word in name for word in SECRET_WORDS) or _holds_private_key(self.root / relative):
                found.append(relative)
        return found

    def digest(self, cache_root: Path | None = None) -> str:
        """sha256 over (path, content hash) of every included file."""
        return tree_digest(self.root, list(self), cache_root if cache_root is not None else self.root)


def _link_target(link: Path, root: Path) -> Path | None:
    """Where a link points, relative to the project's (resolved) root; None when that is outside it, or nowhere."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling, or a loop
        return None
    return target.relative_to(root) if target.is_relative_to(root) and target.is_file() else None


def _ignored_dir(spec: pathspec.GitIgnoreSpec, relative: Path) -> bool:
    """Any directory above `relative` is ignored (`.aws/`, `.stack/`): the file is out with it."""
    return any(spec.match_file(parent.as_posix() + "/") for parent in relative.parents if parent != Path("."))


def _holds_private_key(path: Path) -> bool:
    try:
        if path.stat().st_size > 64 * 1024:
            return False
        return PRIVATE_KEY in path.read_bytes()
    except OSError:
        return False


def tree_digest(root: Path, files: list[Path], cache_root: Path | None) -> str:
    cache = _HashCache(cache_root / CACHE_FILE if cache_root is not None else None)
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.as_posix().encode() + b"\0" + cache.hash(root / rel, rel.as_posix()).encode() + b"\0")
    cache.save()
    return digest.hexdigest()


def package_files(directory: Path) -> list[Path]:
    """The source files of an installed package directory (no bytecode)."""
    return sorted(
        (p.relative_to(directory) for p in directory.rglob("*") if p.is_file() and p.suffix not in (".pyc", ".pyo")),
        key=lambda p: p.as_posix(),
    )


class _HashCache:
    """(size, mtime_ns) -> sha256 per file; a corrupt or missing cache only costs a re-read."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[object]] = {}
        self.seen: set[str] = set()
        self.changed = False
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
                if isinstance(loaded, dict):
                    self.entries = loaded
            except (OSError, ValueError):
                pass

    def hash(self, file: Path, key: str) -> str:
        self.seen.add(key)
        stat = file.stat()
        entry = self.entries.get(key)
        if isinstance(entry, list) and entry[:2] == [stat.st_size, stat.st_mtime_ns] and isinstance(entry[2], str):
            return entry[2]
        sha = hashlib.sha256()
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                sha.update(chunk)
        value = sha.hexdigest()
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, value]
        self.changed = True
        return value

    def save(self) -> None:
        if self.path is None or not (self.changed or set(self.entries) - self.seen):
            return
        # A read-only project still works; it only hashes again next time.
        with contextlib.suppress(OSError):
            write_json_atomic(self.path, {k: v for k, v in self.entries.items() if k in self.seen})
