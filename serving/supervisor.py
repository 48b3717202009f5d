"""Run `processes_per_replica` workers that share one port through SO_REUSEPORT.

The supervisor owns no socket and loads no model. It starts each worker as
`python -m serving --worker`, forwards SIGTERM/SIGINT so they drain, restarts
a worker that dies after it was ready, and stops everything with the worker's
exit code if one fails while starting (a broken predictor must not restart
forever). Metrics from all workers meet in one multiprocess directory.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving.config import CONFIG_ENV, ServingConfig

LOGGER = logging.getLogger("serving")
WORKERS_ENV = "STACK_SERVING_WORKERS"
READY_DIR_ENV = "STACK_SERVING_READY_DIR"
WORKER_GPU_ENV = "STACK_SERVING_WORKER_GPU"  # which of the replica's GPUs a worker process has
POLL_SECONDS = 0.2


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies, so no worker is orphaned (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the worker notices the closed socket pair of a dead parent less promptly


def port_is_free(host: str, port: int) -> bool:
    # Bind without SO_REUSEPORT: a reuse-port socket of another program would
    # otherwise silently share the port with our workers.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class Supervisor:
    def __init__(self, config: ServingConfig) -> None:
        self.config = config
        self.count = config.processes_per_replica
        self.metrics_dir = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="stack-metrics-"))
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.gpu_of: dict[int, int] = {}  # worker pid -> GPU index, when each worker owns one
        self.stopping = False

    def run(self) -> int:
        if not port_is_free(self.config.host, self.config.port):
            from serving.exit_reason import report_startup_error
            from serving.runner import EXIT_STARTUP_FAILED

            message = f"port {self.config.port} on {self.config.host} is already in use; choose another with --port"
            LOGGER.error(message)
            report_startup_error(message)
            return EXIT_STARTUP_FAILED
        _empty(self.metrics_dir)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for _ in range(self.count):
            self._start_worker()
        LOGGER.info(f"started {self.count} worker processes on port {self.config.port}")
        try:
            return self._watch()
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _start_worker(self) -> None:
        index = len(self.workers)
        env = {
            **os.environ,
            CONFIG_ENV: self.config.to_json(),
            WORKERS_ENV: str(self.count),
            READY_DIR_ENV: str(self.metrics_dir),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        if self.config.gpus > 1:
            # Worker i gets one GPU of the replica's: the i-th of CUDA_VISIBLE_DEVICES where the target
            # set it (the local target pins a replica to its GPUs by UUID), else i (inside a container
            # the visible GPUs are renumbered from 0).
            gpu = self._free_gpu(index)
            visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            env["CUDA_VISIBLE_DEVICES"] = visible[gpu] if gpu < len(visible) else str(gpu)
            env[WORKER_GPU_ENV] = str(gpu)
        proc = subprocess.Popen([sys.executable, "-m", "serving", "--worker"], env=env, preexec_fn=die_with_parent)
        self.workers[proc.pid] = proc
        if WORKER_GPU_ENV in env:
            self.gpu_of[proc.pid] = int(env[WORKER_GPU_ENV])

    def _free_gpu(self, fallback: int) -> int:
        taken = {self.gpu_of[pid] for pid in self.workers if pid in self.gpu_of}
        count = int(self.config.gpus)
        return next((gpu for gpu in range(count) if gpu not in taken), fallback % count)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def _watch(self) -> int:
        from serving.metrics import mark_process_dead  # after the multiprocess dir is set

        worst = 0
        while self.workers:
            time.sleep(POLL_SECONDS)
            for pid, proc in list(self.workers.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.workers[pid]
                mark_process_dead(pid)
                was_ready = (self.metrics_dir / f"ready-{pid}").exists()
                (self.metrics_dir / f"ready-{pid}").unlink(missing_ok=True)
                worst = max(worst, code)
                if self.stopping:
                    continue
                if not was_ready and code != 0:
                    LOGGER.error(f"worker {pid} failed while starting (exit {code}); stopping the replica")
                    self._on_signal(signal.SIGTERM, None)
                    continue
                LOGGER.warning(f"worker {pid} exited with code {code}; starting a new one")
                self._start_worker()
        return worst if worst > 0 else 0


def _empty(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        entry.unlink()
