"""The durable queue of a stack's batch jobs: one SQLite file the controller keeps on disk.

Every change is one transaction, so a controller killed at any moment leaves
either the state before it or the state after it: a job survives a restart,
a batch that succeeded is never handed out again, a batch whose worker died
goes back to the queue. A batch moves

    queued ──lease──▶ leased ──succeeded──▶ succeeded
       ▲                 │
       └──raised / its worker died (tries left)──┘   else ──▶ failed

`tries` (Cortex's `sqs_dead_letter_queue.max_receive_count`, default 1) is how
many times a batch may raise; a worker that dies holding a batch costs the
batch a hand-out, and after `tries + DEATHS_ALLOWED` hand-outs it is failed
(a batch that kills every worker it meets must not stall the job forever).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEATHS_ALLOWED = 2  # hand-outs beyond `tries` a batch may lose to dying workers

# Cortex's job statuses (docs/workloads/batch/statuses.md)
ENQUEUING = "status_enqueuing"
RUNNING = "status_running"
ENQUEUE_FAILED = "status_enqueue_failed"
SUCCEEDED = "status_succeeded"
COMPLETED_WITH_FAILURES = "status_completed_with_failures"
WORKER_ERROR = "status_worker_error"
WORKER_OOM = "status_worker_oom"
TIMED_OUT = "status_timed_out"
STOPPED = "status_stopped"
UNEXPECTED_ERROR = "status_unexpected_error"
IN_PROGRESS = (ENQUEUING, RUNNING)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, api TEXT NOT NULL, status TEXT NOT NULL, spec TEXT NOT NULL,
    created REAL NOT NULL, started REAL, ended REAL, total INTEGER NOT NULL DEFAULT 0,
    workers_started INTEGER NOT NULL DEFAULT 0, worker_failures INTEGER NOT NULL DEFAULT 0,
    completer TEXT, message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS batches (
    job TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued', worker TEXT, handed INTEGER NOT NULL DEFAULT 0,
    raised INTEGER NOT NULL DEFAULT 0, seconds REAL, error TEXT,
    PRIMARY KEY (job, seq)
);
CREATE INDEX IF NOT EXISTS batches_by_state ON batches (job, state);
"""


@dataclass(frozen=True)
class JobSpec:
    """What a submission asked for, as Cortex's response echoes it."""

    job_id: str
    api_name: str
    workers: int
    config: dict[str, Any]
    timeout: int | None = None  # seconds from submission
    tries: int = 1  # sqs_dead_letter_queue.max_receive_count
    dead_letter: dict[str, Any] | None = None  # sqs_dead_letter_queue as given
    source: dict[str, Any] = field(default_factory=dict)  # {kind: {...}} without the items themselves

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Job:
    spec: JobSpec
    status: str
    created: float
    started: float | None
    ended: float | None
    total: int
    workers_started: int
    worker_failures: int
    completer: str | None
    message: str
    counts: dict[str, int]  # batch state -> count
    failed_tries: int  # every raise, of every batch (Cortex's batch_metrics.failed counts attempts)
    avg_seconds: float | None

    @property
    def id(self) -> str:
        return self.spec.job_id

    @property
    def remaining(self) -> int:
        return self.counts.get("queued", 0) + self.counts.get("leased", 0)


@dataclass(frozen=True)
class Batch:
    job: str
    seq: int
    id: str
    payload: Any


class JobStore:
    """Thread-safe; each method is one transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a batch acknowledged is on disk
        self._db.executescript(SCHEMA)
        path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- jobs ------------------------------------------------------------------------------

    def create(self, spec: JobSpec, now: float | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, api, status, spec, created) VALUES (?, ?, ?, ?, ?)",
                (spec.job_id, spec.api_name, ENQUEUING, spec.to_json(), now or time.time()),
            )

    def add_batches(self, job_id: str, payloads: Iterable[str]) -> int:
        """Append batches (each already JSON); returns how many the job has now."""
        with self._tx() as db:
            (start,) = db.execute("SELECT COUNT(*) FROM batches WHERE job = ?", (job_id,)).fetchone()
            rows = [(job_id, start + i, str(uuid.uuid4()), text) for i, text in enumerate(payloads)]
            db.executemany("INSERT INTO batches (job, seq, id, payload) VALUES (?, ?, ?, ?)", rows)
            return int(start) + len(rows)

    def enqueued(self, job_id: str, now: float | None = None) -> None:
        """Every batch is in: the job runs (unless it was stopped meanwhile)."""
        with self._tx() as db:
            (total,) = db.execute("SELECT COUNT(*) FROM batches WHERE job = ?", (job_id,)).fetchone()
            db.execute(
                "UPDATE jobs SET status = ?, total = ?, started = ? WHERE id = ? AND status = ?",
                (RUNNING, total, now or time.time(), job_id, ENQUEUING),
            )

    def finish(self, job_id: str, status: str, message: str = "", now: float | None = None) -> bool:
        """End a job in progress; False when it had already ended. Leased batches are let go."""
        with self._tx() as db:
            changed = db.execute(
                "UPDATE jobs SET status = ?, message = ?, ended = ? WHERE id = ? AND status IN (?, ?)",
                (status, message, now or time.time(), job_id, *IN_PROGRESS),
            ).rowcount
            db.execute(
                "UPDATE batches SET state = 'queued', worker = NULL WHERE job = ? AND state = 'leased'", (job_id,)
            )
            return bool(changed)

    def worker_started(self, job_id: str) -> str:
        """A name for the next worker of the job (never reused, across restarts too)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET workers_started = workers_started + 1 WHERE id = ?", (job_id,))
            (n,) = db.execute("SELECT workers_started FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return f"w{n}"

    def worker_failed(self, job_id: str) -> int:
        with self._tx() as db:
            db.execute("UPDATE jobs SET worker_failures = worker_failures + 1 WHERE id = ?", (job_id,))
            (n,) = db.execute("SELECT worker_failures FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return int(n)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return self._job(row) if row else None

    def jobs(self, api: str | None = None, in_progress: bool = False) -> list[Job]:
        query, args = "SELECT * FROM jobs", []
        where = []
        if api is not None:
            where.append("api = ?")
            args.append(api)
        if in_progress:
            where.append(f"status IN ('{ENQUEUING}', '{RUNNING}')")
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created DESC", args).fetchall()
            return [self._job(row) for row in rows]

    def _job(self, row: tuple[Any, ...]) -> Job:
        """With the lock held."""
        job_id, _api, status, spec, created, started, ended, total, started_n, failures, completer, message = row
        counts = dict(
            self._db.execute("SELECT state, COUNT(*) FROM batches WHERE job = ? GROUP BY state", (job_id,)).fetchall()
        )
        raised, avg = self._db.execute(
            "SELECT COALESCE(SUM(raised), 0), AVG(CASE WHEN state = 'succeeded' THEN seconds END) "
            "FROM batches WHERE job = ?",
            (job_id,),
        ).fetchone()
        return Job(
            JobSpec.from_json(spec), status, created, started, ended, total, started_n, failures, completer, message,
            counts, int(raised), avg,
        )  # fmt: skip

    # -- batches ---------------------------------------------------------------------------

    def lease(self, job_id: str, worker: str) -> Batch | None:
        """The next queued batch, now held by `worker`; None when none is queued."""
        with self._tx() as db:
            held = db.execute(
                "SELECT seq, id, payload FROM batches WHERE job = ? AND state = 'leased' AND worker = ?",
                (job_id, worker),
            ).fetchone()
            if held is None:  # a worker asking again (its answer was lost) gets the batch it holds
                held = db.execute(
                    "SELECT seq, id, payload FROM batches WHERE job = ? AND state = 'queued' ORDER BY seq LIMIT 1",
                    (job_id,),
                ).fetchone()
                if held is None:
                    return None
                db.execute(
                    "UPDATE batches SET state = 'leased', worker = ?, handed = handed + 1 WHERE job = ? AND seq = ?",
                    (worker, job_id, held[0]),
                )
            return Batch(job_id, held[0], held[1], json.loads(held[2]))

    def succeeded(self, job_id: str, batch_id: str, worker: str, seconds: float) -> bool:
        """False when the batch was not this worker's (handed to another after this one was thought dead)."""
        with self._tx() as db:
            return bool(
                db.execute(
                    "UPDATE batches SET state = 'succeeded', worker = NULL, seconds = ?, error = NULL "
                    "WHERE job = ? AND id = ? AND state = 'leased' AND worker = ?",
                    (seconds, job_id, batch_id, worker),
                ).rowcount
            )

    def raised(self, job_id: str, batch_id: str, worker: str, error: str, tries: int) -> bool:
        """The batch raised: back to the queue while it has tries left, else failed."""
        with self._tx() as db:
            return bool(
                db.execute(
                    "UPDATE batches SET raised = raised + 1, worker = NULL, error = ?, "
                    "state = CASE WHEN raised + 1 >= ? THEN 'failed' ELSE 'queued' END "
                    "WHERE job = ? AND id = ? AND state = 'leased' AND worker = ?",
                    (error[-2000:], tries, job_id, batch_id, worker),
                ).rowcount
            )

    def release(self, job_id: str, workers_alive: set[str], tries: int) -> int:
        """Batches held by workers no longer alive go back to the queue (or fail past their hand-outs)."""
        with self._tx() as db:
            held = db.execute(
                "SELECT seq, worker, handed FROM batches WHERE job = ? AND state = 'leased'", (job_id,)
            ).fetchall()
            lost = [(seq, handed) for seq, worker, handed in held if worker not in workers_alive]
            for seq, handed in lost:
                state = "failed" if handed >= tries + DEATHS_ALLOWED else "queued"
                db.execute(
                    "UPDATE batches SET state = ?, worker = NULL, error = COALESCE(error, 'its worker died') "
                    "WHERE job = ? AND seq = ?",
                    (state, job_id, seq),
                )
            return len(lost)

    def claim_completion(self, job_id: str, worker: str) -> bool:
        """Whether `worker` runs on_job_complete: the first to ask once every batch has ended."""
        with self._tx() as db:
            return bool(
                db.execute(
                    "UPDATE jobs SET completer = ? WHERE id = ? AND (completer IS NULL OR completer = ?)",
                    (worker, job_id, worker),
                ).rowcount
            )

    def reset_completer(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET completer = NULL WHERE id = ?", (job_id,))

    def failures(self, job_id: str, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, raised, error FROM batches WHERE job = ? AND state = 'failed' ORDER BY seq LIMIT ?",
                (job_id, limit),
            ).fetchall()
        return [{"batch_id": b, "tries": r, "error": e} for b, r, e in rows]
