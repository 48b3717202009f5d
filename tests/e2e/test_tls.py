"""HTTPS at the gateway, on the real Traefik: certificate files (and their renewal), the redirect from
plain HTTP, the minimum version, HTTP/2, mutual TLS, ACME against a real ACME server (Pebble), and
every bad certificate input refused before anything starts. Certificates come from a throwaway CA
(trustme); clients verify against it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests
import trustme
from cli import stack
from common import PREDICTORS, free_port, require_binary
from waits import holds, until

SUBJECT_PREDICTOR = """
class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload, headers):
        return {"client": headers.get("X-Forwarded-Tls-Client-Cert-Info"), "payload": payload}
"""


def served_serial(port: int, ca: Path | None = None, sni: str = "127.0.0.1", client: Path | None = None) -> int:
    """The serial number of the certificate the gateway shows (verified against `ca` when given)."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    if client is not None:
        context.load_cert_chain(str(client))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    """A server certificate for 127.0.0.1 and a client certificate, from two throwaway CAs."""
    out = tmp_path / "pki"
    out.mkdir()
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("127.0.0.1", "localhost", "gateway.test")
    paths = {
        "ca": out / "server-ca.pem",
        "cert": out / "gateway.pem",
        "key": out / "gateway.key",
        "client_ca": out / "clients-ca.pem",
        "client": out / "alice.pem",
        "stranger": out / "stranger.pem",
    }
    server_ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    paths["key"].chmod(0o600)
    client_ca.cert_pem.write_to_path(str(paths["client_ca"]))
    client_ca.issue_cert("alice@example.com", common_name="alice").private_key_and_cert_chain_pem.write_to_path(
        str(paths["client"])
    )
    trustme.CA().issue_cert("mallory").private_key_and_cert_chain_pem.write_to_path(str(paths["stranger"]))
    return paths


def write_project(root: Path, port: int, tls: str, extra: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "predictor.py").write_text(SUBJECT_PREDICTOR)
    (root / "stack.yaml").write_text(
        f"project: tlstest\ngateway:\n  port: {port}\n{extra}  tls: {tls}\n"
        "apis:\n  - name: who\n    predictor: {path: predictor.py}\n"
    )


@pytest.fixture
def local_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "project"
    yield root
    if (root / "stack.yaml").exists():
        stack("down", "--local", str(root), cwd=root, check=False)


def test_https_with_files_redirect_http2_and_renewal(local_root: Path, certs: dict[str, Path], tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    shutil.copy(certs["cert"], tmp_path / "served.pem")
    shutil.copy(certs["key"], tmp_path / "served.key")
    write_project(
        local_root,
        port,
        f"{{cert_file: {tmp_path / 'served.pem'}, key_file: {tmp_path / 'served.key'}, min_version: '1.3'}}",
        extra=f"  http_port: {http_port}\n",
    )
    up = stack("up", "--local", str(local_root), cwd=local_root)
    assert f"https://127.0.0.1:{port}/who" in up.stdout and "curl -k" in up.stdout
    url = f"https://127.0.0.1:{port}/who"
    # requests and aiohttp, verifying against the test CA.
    assert requests.post(url, json={"a": 1}, verify=str(certs["ca"]), timeout=10).json()["payload"] == {"a": 1}

    async def with_aiohttp() -> int:
        context = ssl.create_default_context(cafile=str(certs["ca"]))
        async with aiohttp.ClientSession() as session, session.post(url, json={}, ssl=context) as response:
            return response.status

    assert asyncio.run(with_aiohttp()) == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(url, json={}, timeout=10)  # the system's CAs do not know it
    # Plain HTTP on http_port: a permanent redirect to the same path over HTTPS.
    moved = requests.get(f"http://127.0.0.1:{http_port}/who?x=1", allow_redirects=False, timeout=10)
    assert moved.status_code in (301, 308) and moved.headers["Location"] == f"https://127.0.0.1:{port}/who?x=1"
    # TLS 1.2 is below min_version: refused at the handshake.
    old = ssl.create_default_context(cafile=str(certs["ca"]))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        old.wrap_socket(raw, server_hostname="127.0.0.1")
    # HTTP/2 where the client offers it.
    if shutil.which("curl"):
        version = subprocess.run(
            ["curl", "-s", "--http2", "--cacert", str(certs["ca"]), "-o", "/dev/null", "-w", "%{http_version}", url],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        assert version == "2"
    # `stack status` checks the routes (on the stack's own plain entrypoint) and shows https.
    shown = stack("status", "--local", "-p", str(local_root), cwd=local_root).stdout
    assert f"https://127.0.0.1:{port}/who" in shown and "live" in shown
    # A renewed certificate written over the old files: served within seconds, Traefik not restarted.
    gateway = next(c for c in _status(local_root)["components"] if c["name"] == "gateway")
    before = served_serial(port, certs["ca"])
    renewed_ca = trustme.CA()
    renewed = renewed_ca.issue_cert("127.0.0.1")
    renewed_ca.cert_pem.write_to_path(str(tmp_path / "renewed-ca.pem"))
    renewed.private_key_pem.write_to_path(str(tmp_path / "served.key"))
    renewed.cert_chain_pems[0].write_to_path(str(tmp_path / "served.pem"))
    until(
        holds(lambda: served_serial(port, tmp_path / "renewed-ca.pem") != before),
        "served_serial(port, tmp_path / 'renewed-ca.pem') != before",
        15,
    )
    again = next(c for c in _status(local_root)["components"] if c["name"] == "gateway")
    assert again["detail"] == gateway["detail"] and again["restarts"] == 0
    tls_yml = local_root / ".stack/local/traefik/tls.yml"
    assert (tls_yml.stat().st_mode & 0o777) == 0o600


def _status(root: Path) -> dict:
    return json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)


def test_mutual_tls(local_root: Path, certs: dict[str, Path]) -> None:
    port = free_port()
    tls = f"{{cert_file: {certs['cert']}, key_file: {certs['key']}, client_ca_file: {certs['client_ca']}}}"
    write_project(local_root, port, tls)
    stack("up", "--local", str(local_root), cwd=local_root)  # its own checks need no client certificate
    url = f"https://127.0.0.1:{port}/who"
    # No certificate, or one from another CA: refused at the handshake.
    for client in (None, certs["stranger"]):
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.post(url, json={}, verify=str(certs["ca"]), cert=str(client) if client else None, timeout=10)
    answer = requests.post(url, json={}, verify=str(certs["ca"]), cert=str(certs["client"]), timeout=10).json()
    # The replica sees the client's subject (URL-encoded, as Traefik writes it).
    assert "CN%3Dalice" in answer["client"]
    # A client cannot forge it: Traefik drops the header from untrusted senders.
    forged = requests.post(
        url,
        json={},
        verify=str(certs["ca"]),
        cert=str(certs["client"]),
        headers={"X-Forwarded-Tls-Client-Cert-Info": "Subject%3D%22CN%3Dadmin%22"},
        timeout=10,
    ).json()
    assert "CN%3Dadmin" not in forged["client"] and "CN%3Dalice" in forged["client"]
    assert _status(local_root)["apis"][0]["status"] == "live"


def test_bad_certificate_input_is_refused_before_anything_starts(tmp_path: Path, certs: dict[str, Path]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    root = tmp_path / "bad"
    port = free_port()
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other_key))
    # An expired self-signed certificate.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "old")])
    now = time.time()
    import datetime

    expired = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime.fromtimestamp(now - 86400 * 30, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(now - 86400, datetime.UTC))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "expired.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "expired.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "expired.key").chmod(0o600)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    cases = [
        (f"{{cert_file: missing.pem, key_file: {certs['key']}}}", "gateway.tls.cert_file", "missing.pem not found"),
        (f"{{cert_file: {certs['cert']}, key_file: {other_key}}}", "gateway.tls.key_file", "does not match"),
        (f"{{cert_file: {tmp_path / 'expired.pem'}, key_file: {tmp_path / 'expired.key'}}}", "cert_file", "expired on"),
        (f"{{cert_file: {tmp_path / 'junk.pem'}, key_file: {certs['key']}}}", "cert_file", "is not a PEM certificate"),
        (
            f"{{cert_file: {certs['cert']}, key_file: {certs['key']}, client_ca_file: {tmp_path / 'junk.pem'}}}",
            "client_ca_file",
            "is not a PEM CA certificate",
        ),
        (f"{{cert_file: {certs['cert']}}}", "gateway.tls", "set key_file too"),
        (f"{{cert_file: {certs['cert']}, key_file: {certs['key']}, min_version: '1.0'}}", "min_version", "1.2"),
        ("{acme: {email: ops@example.com, domains: [a.test], challenge: http}}", "gateway", "set http_port"),
    ]
    for tls, field, message in cases:
        write_project(root, port, tls)
        for command in (["validate", str(root)], ["up", "--local", str(root)]):
            result = stack(*command, cwd=root, check=False)
            assert result.returncode != 0, (tls, result.stdout)
            assert "stack.yaml" in result.stderr and field in result.stderr and message in result.stderr, (
                tls,
                result.stderr,
            )
        assert not (root / ".stack" / "local" / "state.json").exists()  # nothing started
    # A key others may read: a warning naming the file and the fix; http_port without tls: an error.
    certs["key"].chmod(0o644)
    write_project(root, port, f"{{cert_file: {certs['cert']}, key_file: {certs['key']}}}")
    warned = stack("validate", str(root), cwd=root)
    assert f"gateway.tls.key_file {certs['key']} is readable by other users" in warned.stderr
    assert "chmod 600" in warned.stderr
    (root / "stack.yaml").write_text(
        f"project: tlstest\ngateway: {{port: {port}, http_port: {free_port()}}}\n"
        "apis:\n  - name: who\n    predictor: {path: predictor.py}\n"
    )
    plain = stack("validate", str(root), cwd=root, check=False)
    assert plain.returncode != 0 and "http_port redirects to HTTPS: it needs tls" in plain.stderr


def test_api_keys_in_clear_text_are_warned_about(tmp_path: Path) -> None:
    root = tmp_path / "clear"
    root.mkdir()
    shutil.copy(PREDICTORS / "cortex_style.py", root / "predictor.py")
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: cleartext\ngateway: {{port: {port}, host: 0.0.0.0, api_keys: [a-long-key-123]}}\n"
        "apis:\n  - name: api\n    predictor: {path: predictor.py}\n"
    )
    try:
        up = stack("up", "--local", str(root), cwd=root)
        assert "the keys would travel in clear text" in up.stderr and "gateway.tls" in up.stderr
    finally:
        stack("down", "--local", str(root), cwd=root, check=False)


@contextlib.contextmanager
def run_pebble(home: Path, host: str = "127.0.0.1") -> Iterator[dict[str, object]]:
    """Let's Encrypt's test ACME server on `host`, issuing without a public challenge (PEBBLE_VA_ALWAYS_VALID)."""
    binary = require_binary("pebble")
    home.mkdir()
    ca = trustme.CA()
    listener = ca.issue_cert(*dict.fromkeys([host, "127.0.0.1", "localhost"]))
    listener.private_key_pem.write_to_path(str(home / "key.pem"))
    listener.cert_chain_pems[0].write_to_path(str(home / "cert.pem"))
    ca.cert_pem.write_to_path(str(home / "listener-ca.pem"))
    port, management = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"{host}:{port}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(home / "cert.pem"),
            "privateKey": str(home / "key.pem"),
            "httpPort": free_port(),
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (home / "pebble.json").write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_VA_NOSLEEP": "1"}
    log = open(home / "pebble.log", "wb")  # noqa: SIM115 - the server's output, closed below
    server = subprocess.Popen([binary, "-config", str(home / "pebble.json")], stdout=log, stderr=log, env=env)
    try:
        verify = str(home / "listener-ca.pem")
        directory = f"https://{host}:{port}/dir"
        until(
            holds(lambda: requests.get(directory, verify=verify, timeout=2).ok),
            "requests.get(directory, verify=verify, timeout=2).ok",
            20,
        )
        yield {"directory": directory, "listener_ca": home / "listener-ca.pem", "management": management}
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def pebble_root(pebble: dict[str, object], out: Path) -> Path:
    """The root of the chains Pebble issues (it makes a new one at every start), from its management API."""
    verify = str(pebble["listener_ca"])
    out.write_text(requests.get(f"https://127.0.0.1:{pebble['management']}/roots/0", verify=verify, timeout=10).text)
    return out


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[dict[str, object]]:
    with run_pebble(tmp_path / "pebble") as server:
        yield server


def test_acme_certificates_from_pebble_kept_across_up(local_root: Path, pebble: dict[str, object]) -> None:
    port = free_port()
    ca_file = local_root.parent / "pebble-listener-ca.pem"
    local_root.mkdir(parents=True)
    shutil.copy(str(pebble["listener_ca"]), ca_file)
    acme = (
        f"{{acme: {{email: ops@example.com, domains: [gateway.test, api.gateway.test], "
        f"ca_server: '{pebble['directory']}', ca_file: {ca_file}}}}}"
    )
    write_project(local_root, port, acme)
    stack("up", "--local", str(local_root), cwd=local_root)
    issuer = pebble_root(pebble, local_root.parent / "pebble-root.pem")
    until(
        holds(lambda: served_serial(port, issuer, sni="gateway.test") > 0),
        "served_serial(port, issuer, sni='gateway.test') > 0",
        60,
    )
    first = served_serial(port, issuer, sni="api.gateway.test")
    storage = local_root / ".stack" / "acme" / "acme.json"
    assert (storage.stat().st_mode & 0o777) == 0o600
    assert json.loads(storage.read_text())["acme"]["Certificates"]
    # Down and up again: the stored certificate is served, no new order.
    stack("down", "--local", str(local_root), cwd=local_root)
    stack("up", "--local", str(local_root), cwd=local_root)
    until(
        holds(lambda: served_serial(port, issuer, sni="gateway.test") == first),
        "served_serial(port, issuer, sni='gateway.test') == first",
        30,
    )


@pytest.mark.docker
def test_compose_https_mutual_tls_and_renewal(tmp_path: Path, certs: dict[str, Path]) -> None:
    from docker_stack import containers, docker_ready, remove_project

    if docker_ready() is not None:
        pytest.skip(str(docker_ready()))
    root = tmp_path / "composed"
    name = f"tl{int(time.time() * 1000) % 10**8}"
    port, http_port = free_port(), free_port()
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(certs["cert"], served / "gateway.pem")
    shutil.copy(certs["key"], served / "gateway.key")
    files = f"cert_file: {served / 'gateway.pem'}, key_file: {served / 'gateway.key'}"
    tls = f"{{{files}, client_ca_file: {certs['client_ca']}}}"
    write_project(root, port, tls, extra=f"  http_port: {http_port}\n")
    spec = (root / "stack.yaml").read_text().replace("project: tlstest", f"project: {name}")
    (root / "stack.yaml").write_text(spec + f"prometheus: {{port: {free_port()}}}\n")
    try:
        up = stack("up", str(root), cwd=root)
        url = f"https://127.0.0.1:{port}/who"
        assert url in up.stdout
        answer = requests.post(url, json={}, verify=str(certs["ca"]), cert=str(certs["client"]), timeout=10)
        assert "CN%3Dalice" in answer.json()["client"]
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.post(url, json={}, verify=str(certs["ca"]), timeout=10)
        moved = requests.get(f"http://127.0.0.1:{http_port}/who", allow_redirects=False, timeout=10)
        assert moved.status_code in (301, 308) and moved.headers["Location"] == url
        # The key is in no image, no container's configuration and no plan file; tls.yml is 0600.
        key = certs["key"].read_text().strip().splitlines()[1]
        for c in containers(name):
            assert key not in json.dumps(c["Config"]), c["Name"]
        for plan_file in (root / ".stack/plan/compose").rglob("*"):
            assert plan_file.is_dir() or key not in plan_file.read_text(), plan_file
        tls_yml = root / ".stack/compose/control/routes/tls.yml"
        assert (tls_yml.stat().st_mode & 0o777) == 0o600
        shown = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)
        assert shown["apis"][0]["status"] == "live"
        # Renewed in place: the controller re-reads the files, Traefik serves the new one without a restart.
        before = served_serial(port, certs["ca"], client=certs["client"])
        renewed_ca = trustme.CA()
        renewed = renewed_ca.issue_cert("127.0.0.1")
        renewed_ca.cert_pem.write_to_path(str(tmp_path / "renewed-ca.pem"))
        renewed.private_key_pem.write_to_path(str(served / "gateway.key"))
        renewed.cert_chain_pems[0].write_to_path(str(served / "gateway.pem"))
        until(
            holds(lambda: served_serial(port, tmp_path / "renewed-ca.pem", client=certs["client"]) != before),
            "served_serial(port, tmp_path / 'renewed-ca.pem', client=certs['client']) != before",
            20,
        )
        gateway = next(c for c in containers(name) if c["Config"]["Labels"].get("stack.role") == "gateway")
        assert gateway["RestartCount"] == 0 and gateway["State"]["Running"]
    finally:
        remove_project(root, name)


def test_nomad_renders_tls_from_a_variable_into_the_secrets_directory(
    tmp_path: Path, certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A contract test: the jobs against Nomad's OpenAPI schema, the variable against the stand-in."""
    from nomad_standin import NomadStandIn

    from nomad_schema import schema_errors
    from stack.spec import load_spec
    from stack.targets.nomad.target import NomadTarget
    from stack.targets.nomad.variables import write_tls

    root = tmp_path / "onnomad"
    port, http_port = free_port(), free_port()
    tls = f"{{cert_file: {certs['cert']}, key_file: {certs['key']}, client_ca_file: {certs['client_ca']}}}"
    write_project(root, port, tls, extra=f"  http_port: {http_port}\n")
    stack("plan", "--nomad", str(root), cwd=root)
    plan = root / ".stack/plan/nomad"
    key = certs["key"].read_text().strip().splitlines()[1]
    for job_file in plan.glob("*.json"):
        assert schema_errors(json.loads(job_file.read_text())) == [], job_file
        assert key not in job_file.read_text()
    job = json.loads((plan / "tlstest-traefik.json").read_text())["Job"]
    group = job["TaskGroups"][0]
    task = group["Tasks"][0]
    args = task["Config"]["args"]
    assert "--entrypoints.web.http.tls=true" in args and "--providers.file.directory=/secrets/routes" in args
    assert "--entrypoints.web.http.middlewares=stack-client-cert@file" in args
    assert f"--entrypoints.http.address=:{http_port}" in args
    assert {"Label": "http", "Value": http_port, "To": http_port} in group["Networks"][0]["ReservedPorts"]
    template = next(t for t in task["Templates"] if t["DestPath"] == "secrets/routes/tls.yml")
    assert template["Perms"] == "0600" and "nomad/jobs/tlstest-traefik/traefik" in template["EmbeddedTmpl"]

    standin = NomadStandIn().start()
    try:
        monkeypatch.setenv("NOMAD_ADDR", standin.address)
        target = NomadTarget(load_spec(root))
        write_tls(target.api, target.loaded, lambda line: None)
        items = standin.variables["nomad/jobs/tlstest-traefik/traefik"]["Items"]
        assert key in items["tls"] and "RequireAndVerifyClientCert" in items["tls"]
        assert standin.problems == []
    finally:
        standin.stop()


@pytest.mark.docker
def test_compose_acme_from_pebble(tmp_path: Path) -> None:
    """The gateway's container orders its certificate from Pebble on the host's Docker bridge address."""
    from docker_stack import docker_ready, remove_project

    if docker_ready() is not None:
        pytest.skip(str(docker_ready()))
    bridge = subprocess.run(
        ["docker", "network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Gateway}}"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not bridge:
        pytest.skip("Docker's default bridge has no gateway address here")
    root = tmp_path / "acme-compose"
    name = f"ta{int(time.time() * 1000) % 10**8}"
    port = free_port()
    with run_pebble(tmp_path / "pebble", host=bridge) as pebble:
        root.mkdir()
        shutil.copy(str(pebble["listener_ca"]), root / "acme-ca.pem")
        server = f"ca_server: '{pebble['directory']}', ca_file: acme-ca.pem"
        acme = f"{{acme: {{email: ops@example.com, domains: [gateway.test], {server}}}}}"
        write_project(root, port, acme)
        spec = (root / "stack.yaml").read_text().replace("project: tlstest", f"project: {name}")
        (root / "stack.yaml").write_text(spec + f"prometheus: {{port: {free_port()}}}\n")
        try:
            stack("up", str(root), cwd=root)
            issuer = pebble_root(pebble, tmp_path / "pebble-root.pem")
            until(
                holds(lambda: served_serial(port, issuer, sni="gateway.test") > 0),
                "served_serial(port, issuer, sni='gateway.test') > 0",
                60,
            )
            first = served_serial(port, issuer, sni="gateway.test")
            # Kept in the stack's volume: a recreated gateway serves the same certificate.
            stack("down", str(root), cwd=root)
            stack("up", str(root), cwd=root)
            until(
                holds(lambda: served_serial(port, issuer, sni="gateway.test") == first),
                "served_serial(port, issuer, sni='gateway.test') == first",
                30,
            )
        finally:
            remove_project(root, name)
