"""`stack jobs`: a stack's BatchAPI jobs, read from its endpoints through the gateway (every target alike)."""

from __future__ import annotations

import datetime
from typing import Any

import click
import requests

from stack.errors import StackError, UnknownApi
from stack.spec import LoadedSpec


def list_jobs(loaded: LoadedSpec, gateway: str, api: str | None = None) -> list[dict[str, Any]]:
    """Every job of the stack's BatchAPIs (or of `api`), newest first, as Cortex's job_status."""
    spec = loaded.spec
    if api is not None:
        chosen = [spec.batch_api(api)]
    elif spec.batch_apis:
        chosen = spec.batch_apis
    else:
        raise UnknownApi("(any BatchAPI)", [])
    headers = {"Authorization": f"Bearer {spec.gateway.api_keys[0]}"} if spec.gateway.api_keys else {}
    found: list[dict[str, Any]] = []
    for batch in chosen:
        url = f"{gateway}{batch.endpoint}"
        try:
            # 127.0.0.1 is not the name on the gateway's certificate: the address is ours, not the network's.
            answer = requests.get(url, headers=headers, timeout=10, verify=False)
        except requests.RequestException as exc:
            raise StackError(f"the gateway does not answer at {url}: is the stack up? ({exc})") from None
        if answer.status_code != 200:
            raise StackError(f"{url}: HTTP {answer.status_code}: {answer.text[:300]}")
        found += answer.json()
    return sorted(found, key=lambda job: job.get("created_time") or "", reverse=True)


def show_jobs(jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        click.echo("no jobs yet: POST one to the API's endpoint")
        return
    click.echo(f"{'API':<16} {'JOB':<18} {'STATUS':<32} {'BATCHES':>9} {'FAILED':>7} {'WORKERS':>7}  SUBMITTED")
    for job in jobs:
        metrics = job.get("batch_metrics") or {}
        done = f"{metrics.get('succeeded', 0)}/{job.get('total_batch_count', 0)}"
        created = (job.get("created_time") or "")[:19].replace("T", " ")
        click.echo(
            f"{job['api_name']:<16} {job['job_id']:<18} {job['status']:<32} {done:>9} "
            f"{metrics.get('failed', 0):>7} {job.get('workers', 0):>7}  {created}"
        )
    click.echo(f"(times in UTC; now {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S})")
