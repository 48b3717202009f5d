"""A BatchAPI job submission, as Cortex v0.25 takes it (docs/workloads/batch/endpoints.md).

    {"workers": 2, "timeout": 3600, "config": {...},
     "sqs_dead_letter_queue": {"arn": "...", "max_receive_count": 3},
     one of  "item_list": {"items": [...], "batch_size": 8}
             "file_path_lister": {"s3_paths": [...], "includes": [...], "excludes": [...], "batch_size": 8}
             "delimited_files": {"s3_paths": [...], "includes": [...], "excludes": [...], "batch_size": 8}}

`parse` checks the shape and names the field of a bad one (a 400 for the
client, as Cortex answers); `batches` turns the source into batches, each a
JSON text under `MAX_BATCH_BYTES` — S3 listed and read with boto3
(`AWS_ENDPOINT_URL` for MinIO and other S3-compatible servers).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from stack.errors import StackError

MAX_BATCH_BYTES = 256 * 1024  # Cortex: each batch must be smaller than 256 KiB
MAX_SUBMISSION_BYTES = 10 * 1024 * 1024  # Cortex: the whole item_list request under 10 MiB
SOURCES = ("item_list", "file_path_lister", "delimited_files")
KNOWN = {"workers", "timeout", "sqs_dead_letter_queue", "config", *SOURCES}


class BadSubmission(StackError):
    """A submission the API refuses (400), naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Submission:
    workers: int
    source: str  # one of SOURCES
    batch_size: int
    items: list[Any] = field(default_factory=list)  # item_list
    s3_paths: list[str] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    timeout: int | None = None
    tries: int = 1
    dead_letter: dict[str, Any] | None = None

    def described(self) -> dict[str, Any]:
        """The source as the job keeps it (without the items themselves)."""
        if self.source == "item_list":
            return {"item_list": {"batch_size": self.batch_size, "items": len(self.items)}}
        return {
            self.source: {
                "s3_paths": self.s3_paths,
                "includes": self.includes,
                "excludes": self.excludes,
                "batch_size": self.batch_size,
            }
        }


def _int(value: Any, at: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadSubmission(at, f"must be an integer, got {json.dumps(value)}")
    if value < minimum:
        raise BadSubmission(at, f"must be at least {minimum}, got {value}")
    return value


def _strings(value: Any, at: str, required: bool = False) -> list[str]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or (required and not value):
        raise BadSubmission(at, "must be a non-empty list of strings" if required else "must be a list of strings")
    return value


def parse(body: Any) -> Submission:
    if not isinstance(body, dict):
        raise BadSubmission("body", "a job submission is a JSON object with workers and one of " + ", ".join(SOURCES))
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise BadSubmission(unknown[0], f"unknown field; a submission takes {', '.join(sorted(KNOWN))}")
    if "workers" not in body:
        raise BadSubmission("workers", "required: the number of workers to run the job on")
    workers = _int(body["workers"], "workers", 1)
    given = [s for s in SOURCES if s in body]
    if len(given) != 1:
        which = " and ".join(given) if given else "none"
        raise BadSubmission("item_list", f"give exactly one of {', '.join(SOURCES)} (got {which})")
    source = given[0]
    spec = body[source]
    if not isinstance(spec, dict):
        raise BadSubmission(source, "must be an object")
    if "batch_size" not in spec:
        raise BadSubmission(f"{source}.batch_size", "required: the number of items per batch")
    batch_size = _int(spec["batch_size"], f"{source}.batch_size", 1)
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise BadSubmission("config", "must be an object (merged over the API's predictor.config)")
    timeout = None if body.get("timeout") is None else _int(body["timeout"], "timeout", 1)
    dead_letter = body.get("sqs_dead_letter_queue")
    tries = 1
    if dead_letter is not None:
        if not isinstance(dead_letter, dict):
            raise BadSubmission("sqs_dead_letter_queue", "must be an object with max_receive_count")
        tries = _int(dead_letter.get("max_receive_count"), "sqs_dead_letter_queue.max_receive_count", 1)
    common: dict[str, Any] = {"config": config, "timeout": timeout, "tries": tries, "dead_letter": dead_letter}
    if source == "item_list":
        allowed = {"items", "batch_size"}
        items = spec.get("items")
        if not isinstance(items, list) or not items:
            raise BadSubmission("item_list.items", "required: a non-empty list of items")
        _no_unknown(spec, allowed, source)
        submission = Submission(workers, source, batch_size, items=items, **common)
        for _ in batches(submission):  # a batch over the limit is the client's to fix: 400 now
            pass
        return submission
    _no_unknown(spec, {"s3_paths", "includes", "excludes", "batch_size"}, source)
    paths = _strings(spec.get("s3_paths"), f"{source}.s3_paths", required=True)
    for index, path in enumerate(paths):
        if not path.startswith("s3://") or len(path) <= len("s3://"):
            raise BadSubmission(f"{source}.s3_paths[{index}]", f"must be an s3://bucket/prefix URL, got {path!r}")
    includes = _strings(spec.get("includes"), f"{source}.includes")
    excludes = _strings(spec.get("excludes"), f"{source}.excludes")
    return Submission(workers, source, batch_size, s3_paths=paths, includes=includes, excludes=excludes, **common)


def _no_unknown(spec: dict[str, Any], allowed: set[str], source: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise BadSubmission(f"{source}.{unknown[0]}", f"unknown field; {source} takes {', '.join(sorted(allowed))}")


# -- batches -------------------------------------------------------------------------------


def batches(submission: Submission) -> Iterator[str]:
    """The job's batches, each as JSON; BadSubmission for one over MAX_BATCH_BYTES."""
    at = f"{submission.source}.batch_size"
    chunk: list[Any] = []
    for item in _items(submission):
        chunk.append(item)
        if len(chunk) == submission.batch_size:
            yield _encoded(chunk, at)
            chunk = []
    if chunk:
        yield _encoded(chunk, at)


def _encoded(chunk: list[Any], at: str) -> str:
    text = json.dumps(chunk, separators=(",", ":"))
    if len(text.encode()) > MAX_BATCH_BYTES:
        raise BadSubmission(
            at, f"a batch of {len(chunk)} items is {len(text.encode())} bytes, over the 256 KiB limit: lower it"
        )
    return text


def _items(submission: Submission) -> Iterator[Any]:
    if submission.source == "item_list":
        yield from submission.items
        return
    files = matching_files(submission.s3_paths, submission.includes, submission.excludes)
    if submission.source == "file_path_lister":
        yield from files
        return
    for path in files:  # delimited_files: each line of each file is one JSON item
        bucket, key = _split(path)
        body = _s3().get_object(Bucket=bucket, Key=key)["Body"]
        for number, line in enumerate(body.iter_lines(), 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise BadSubmission("delimited_files.s3_paths", f"{path} line {number} is not JSON: {exc}") from None


def matching_files(s3_paths: list[str], includes: list[str], excludes: list[str]) -> list[str]:
    """Each path is a prefix (or a whole key); a file is kept when it matches an include (any, when there
    are none) and no exclude. Patterns are globs over the whole s3:// URL, `**` across directories."""
    found: list[str] = []
    seen: set[str] = set()
    client = _s3()
    for prefix in s3_paths:
        bucket, key = _split(prefix)
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            for page in pages:
                for item in page.get("Contents", []):
                    url = f"s3://{bucket}/{item['Key']}"
                    if item["Key"].endswith("/") or url in seen:
                        continue
                    if includes and not any(_glob(url, p) for p in includes):
                        continue
                    if any(_glob(url, p) for p in excludes):
                        continue
                    seen.add(url)
                    found.append(url)
        except Exception as exc:
            if isinstance(exc, BadSubmission):
                raise
            raise BadSubmission("s3_paths", f"cannot list {prefix}: {exc}") from None
    if not found:
        raise BadSubmission("s3_paths", "no file matches s3_paths with these includes and excludes")
    return found


def _glob(url: str, pattern: str) -> bool:
    # fnmatch's * already crosses "/"; `**` is the same. A pattern without a scheme matches the key's end.
    return fnmatch.fnmatchcase(url, pattern) or fnmatch.fnmatchcase(url, f"*{pattern.lstrip('*')}")


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def _s3() -> Any:
    try:
        import boto3
    except ImportError:
        raise StackError("S3 sources need boto3 in the controller: pip install boto3") from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    return boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")
