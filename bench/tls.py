"""What HTTPS at the gateway costs: W0 (a JSON echo) through the local target's Traefik over HTTPS
against plain HTTP, in one run, as ratios.

    python bench/tls.py [--duration 10]

One echo replica behind the real Traefik (`stack up --local`), loaded with `wrk` (kept-alive
connections, so the handshake is paid once per connection, as real clients do) at 32 and at 1
connection(s); then the same stack with `gateway.tls` (a throwaway certificate, ECDSA P-256 as
trustme issues it) and the same load; then with new connections for every request (`Connection:
close`), where each request pays a full handshake. Writes the `tls` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import trustme
from runtime import LOAD_CPU, PAYLOAD, _latency
from stackrun import ROOT, free_port, stack

from results import write_section


def wrk(url: str, connections: int, duration: int, close: bool = False) -> tuple[float, float, float, int]:
    lua = f'wrk.method = "POST"\nwrk.body = {json.dumps(PAYLOAD)}\nwrk.headers["Content-Type"] = "application/json"\n'
    if close:
        lua += 'wrk.headers["Connection"] = "close"\n'
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    base = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", "-s", script.name]
    subprocess.run([*base, "-d2s", url], capture_output=True, timeout=60)  # warm-up
    measured = [*base, f"-d{duration}s", "--latency", url]
    out = subprocess.run(measured, capture_output=True, text=True, timeout=120).stdout
    Path(script.name).unlink()
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise SystemExit(f"wrk said:\n{out}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return float(found.group(1)), _latency(out, "50%"), _latency(out, "99%"), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    root = work / "echo"
    shutil.copytree(ROOT / "examples" / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(work / "gateway.pem"))
    server.private_key_pem.write_to_path(str(work / "gateway.key"))
    (work / "gateway.key").chmod(0o600)
    port = free_port()
    base = (
        f"project: benchtls\ngateway:\n  port: {port}\n{{tls}}"
        "apis:\n  - name: echo\n    predictor: {path: predictor.py}\n"
        "    autoscaling: {min_replicas: 1, max_replicas: 1}\n"
    )
    tls = f"  tls: {{cert_file: {work / 'gateway.pem'}, key_file: {work / 'gateway.key'}}}\n"
    rows: list[tuple[str, int, tuple[float, float, float, int]]] = []
    try:
        for scheme, block in (("http", ""), ("https", tls)):
            (root / "stack.yaml").write_text(base.replace("{tls}", block))
            up = stack("up", "--local", str(root), cwd=root)
            if up.returncode != 0:
                raise SystemExit(up.stderr)
            url = f"{scheme}://127.0.0.1:{port}/echo"
            for connections in (32, 1):
                result = wrk(url, connections, args.duration)
                rows.append((f"{scheme} kept alive", connections, result))
                print(rows[-1], flush=True)
            result = wrk(url, 8, args.duration, close=True)
            rows.append((f"{scheme} new connection per request", 8, result))
            print(rows[-1], flush=True)
            stack("down", "--local", str(root), cwd=root)
    finally:
        stack("down", "--local", str(root), cwd=root)
        shutil.rmtree(work, ignore_errors=True)
    plain = {(name.split(" ", 1)[1], c): r for name, c, r in rows if name.startswith("http ")}
    lines = [
        "## HTTPS at the gateway: what TLS costs",
        "",
        "`python bench/tls.py` — W0 (JSON echo, one replica) through the local target's Traefik, plain HTTP",
        "against `gateway.tls` (an ECDSA P-256 certificate), `wrk` on its own core. Ratio: HTTPS / HTTP.",
        "",
        "| gateway | connections | req/s | p50 | p99 | errors | req/s vs HTTP |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, connections, (rps, p50, p99, errors) in rows:
        http = plain[(name.split(" ", 1)[1], connections)][0]
        lines.append(
            f"| {name} | {connections} | {rps:.0f} | {p50:.2f} ms | {p99:.2f} ms | {errors} | x{rps / http:.2f} |"
        )
    write_section("tls", "\n".join(lines))


if __name__ == "__main__":
    main()
