"""Cortex v0.25's own `test/batch/tensorflow` example, its files unmodified (tests/cortex_examples), through
`stack import` and `stack up --local`: a BatchAPI job over images listed in S3, `tensorflow_client` on a
stand-in SavedModel, results written back to S3.

What it reaches on the internet is stood in for on 127.0.0.1: S3 by moto (the example's own
`s3://cortex-examples/...` model path, and the images), and the ImageNet labels file its `__init__`
downloads from storage.googleapis.com by an HTTPS proxy this test runs (the worker trusts this test's
CA through REQUESTS_CA_BUNDLE, as a site with a TLS-inspecting proxy does).
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from batch_stack import Batch
from cli import stack
from common import ROOT, free_port

EXAMPLE = ROOT / "tests" / "cortex_examples" / "batch-tensorflow"
LABELS = "background\n" + "\n".join(f"label-{i}" for i in range(1000))  # as ImageNetLabels.txt: a header line
pytestmark = pytest.mark.xdist_group("batch-local")


class LabelsProxy:
    """An HTTPS proxy answering CONNECT storage.googleapis.com:443 with this test's certificate and the labels."""

    def __init__(self, tmp: Path) -> None:
        import trustme

        ca = trustme.CA()
        self.ca_file = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("storage.googleapis.com").configure_cert(self.context)
        self.port = free_port()
        self.asked: list[str] = []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            connect = (await reader.readline()).decode()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            if not connect.startswith("CONNECT storage.googleapis.com:443 "):
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await writer.start_tls(self.context)
            request = (await reader.readline()).decode()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            self.asked.append(request.split()[1])
            body = LABELS.encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            head += "Connection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabelsProxy]:
    proxy = LabelsProxy(tmp_path)
    # The stack's processes inherit these: HTTPS through the proxy, everything on 127.0.0.1 direct.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(proxy.ca_file))
    yield proxy
    proxy.close()


def _inception_stand_in(path: Path) -> None:
    """A SavedModel with the example's signature: `images` [N, 224, 224, 3] -> `classes` [N, 1000]; the class
    is the image's mean brightness times 999 (so a test can tell which image got which label)."""
    import tensorflow as tf

    class Inception(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="images")])
        def serve(self, images):  # type: ignore[no-untyped-def]
            index = tf.cast(tf.round(tf.reduce_mean(images, axis=[1, 2, 3]) * 999), tf.int32)
            return {"classes": tf.one_hot(index, 1000)}

    module = Inception()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def test_cortex_batch_tensorflow_example_runs_unmodified(
    tmp_path: Path, s3: dict[str, str], labels: LabelsProxy
) -> None:
    pytest.importorskip("tensorflow", reason="pip install 'stack-serve[tensorflow]' (CI installs it)")
    import boto3
    from PIL import Image

    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"])
    for bucket in ("cortex-examples", "images", "results"):
        client.create_bucket(Bucket=bucket)
    model = tmp_path / "inception"
    _inception_stand_in(model)
    for file in model.rglob("*"):
        if file.is_file():
            key = f"tensorflow/image-classifier/inception/{file.relative_to(model)}"
            client.upload_file(str(file), "cortex-examples", key)
    shades = {"black.jpg": 0, "gray.jpg": 128, "white.jpg": 255}
    for name, shade in shades.items():
        image = io.BytesIO()
        Image.new("RGB", (96, 64), (shade, shade, shade)).save(image, format="JPEG")
        client.put_object(Bucket="images", Key=f"photos/{name}", Body=image.getvalue())

    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project)
    stack("import", str(project / "cortex.yaml"), cwd=project)
    port = free_port()
    spec = project / "stack.yaml"  # the translation, on a free port for this test (no Prometheus needed)
    spec.write_text(spec.read_text() + f"gateway: {{port: {port}}}\nprometheus: {{enabled: false}}\n")
    for name in ("predictor.py", "cortex.yaml", "requirements.txt"):
        assert (project / name).read_bytes() == (EXAMPLE / name).read_bytes()
    stack("up", "--local", str(project), cwd=project)
    try:
        batch = Batch(project, port, tmp_path)
        submitted = batch.submit(
            {
                "workers": 2,
                "file_path_lister": {"s3_paths": ["s3://images/photos/"], "includes": ["**.jpg"], "batch_size": 2},
                "config": {"dest_s3_dir": "s3://results/inception"},
            },
            api="image-classifier",
        )
        assert submitted.status_code == 200, submitted.text
        job_id = submitted.json()["job_id"]
        status = batch.ended(job_id, api="image-classifier")
        assert status["status"] == "status_succeeded", status
        assert labels.asked and labels.asked[0].endswith("/data/ImageNetLabels.txt")
        written = client.list_objects_v2(Bucket="results", Prefix=f"inception/{job_id}/")["Contents"]
        classes = {}
        for item in written:
            for result in json.loads(client.get_object(Bucket="results", Key=item["Key"])["Body"].read()):
                classes[result["url"]] = result["class"]
        # label i of the file is labels[i] after the header line: mean 0 -> label-0, 1 -> label-999.
        assert classes["s3://images/photos/black.jpg"] == "label-0"
        assert classes["s3://images/photos/white.jpg"] == "label-999"
        assert classes["s3://images/photos/gray.jpg"] == f"label-{round(128 / 255 * 999)}"
        assert len(written) == 2  # two batches of at most 2 images
    finally:
        stack("down", "--local", str(project), cwd=project, check=False)
