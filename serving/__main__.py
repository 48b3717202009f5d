"""Replica entry point: `python -m serving [PREDICTOR] [options]`.

The settings come from `--config FILE` (JSON written by `stack plan`), else
the STACK_SERVING_CONFIG environment variable, else a bare predictor path with
defaults; flags override single fields. Nothing that imports
prometheus_client may be imported before the multiprocess decision is made.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from serving import logs
from serving.config import ServingConfig, config_from_env


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving", description="Serve one predictor over HTTP.")
    parser.add_argument("predictor", nargs="?", help="predictor file (when no --config is given)")
    parser.add_argument("--config", type=Path, help="serving config JSON written by `stack plan`")
    parser.add_argument("--class", dest="predictor_class", help="predictor class name")
    parser.add_argument("--api", help="API name used in metrics and logs")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--processes", dest="processes_per_replica", type=int)
    parser.add_argument("--threads", dest="threads_per_process", type=int)
    parser.add_argument("--drain-delay", dest="drain_delay", type=float)
    parser.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", dest="log_format", choices=["text", "json"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> ServingConfig:
    if args.config:
        config = ServingConfig.from_json(args.config.read_text())
    elif (from_env := config_from_env()) is not None:
        config = from_env
    elif args.predictor:
        config = ServingConfig(predictor_path=args.predictor)
    else:
        raise SystemExit("python -m serving: give a predictor file or --config FILE")
    overrides = {
        key: getattr(args, key)
        for key in (
            "predictor_class",
            "api",
            "host",
            "port",
            "processes_per_replica",
            "threads_per_process",
            "drain_delay",
            "log_level",
            "log_format",
        )
        if getattr(args, key) is not None
    }
    if args.predictor and args.config:
        overrides["predictor_path"] = args.predictor
    return config.replace(**overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    config = build_config(args)
    logs.setup(config.log_level, config.log_format, api=config.api, capture=True)
    if args.worker:
        return _worker(config)
    if config.processes_per_replica > 1:
        from serving.supervisor import Supervisor

        return Supervisor(config).run()
    from serving.runner import run_single

    return run_single(config)


def _worker(config: ServingConfig) -> int:
    from serving.runner import run, serve
    from serving.supervisor import READY_DIR_ENV, WORKERS_ENV

    ready_dir = Path(os.environ[READY_DIR_ENV])
    workers = int(os.environ[WORKERS_ENV])
    return run(serve(config, reuse_port=True, ready_dir=ready_dir, workers=workers))


if __name__ == "__main__":
    sys.exit(main())
