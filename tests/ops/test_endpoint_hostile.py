"""The EC2 instance metadata answering garbage (a loopback fake): the region it names and the
time it takes are bounded before they choose an endpoint or reach a log line."""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import boto3
import pytest

from ebsfs.aws.api import resolve_endpoints
from ebsfs.options.config import DEFAULT_LOCAL_ENDPOINT, AwsConfig


class _Hostile(http.server.BaseHTTPRequestHandler):
    zone: ClassVar[bytes] = b"eu-west-3b"
    drip: ClassVar[bool] = False
    stop: ClassVar[threading.Event] = threading.Event()

    def do_PUT(self) -> None:
        self._answer(b"a-token")

    def do_GET(self) -> None:
        if not self.drip:
            self._answer(self.zone)
            return
        # One byte every 0.2 s of a 10,000-byte body: every read is within botocore's
        # 1 s timeout, and the whole answer takes half an hour.
        self.send_response(200)
        self.send_header("Content-Length", "10000")
        self.end_headers()
        for _ in range(10000):
            if self.stop.wait(0.2):
                return
            try:
                self.wfile.write(b"a")
                self.wfile.flush()
            except OSError:
                return

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[type[_Hostile]]:
    for name in list(os.environ):
        if name.startswith(("AWS_", "EBSFS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    _Hostile.zone, _Hostile.drip, _Hostile.stop = b"eu-west-3b", False, threading.Event()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}/"
    )
    try:
        yield _Hostile
    finally:
        _Hostile.stop.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    "zone",
    [b"../../xb", b"us-east-1a\nINFO forged log linea", b"evil.example.com/a", b"a" * 5000],
)
def test_a_region_that_is_no_region_name_is_not_chosen(
    hostile: type[_Hostile], zone: bytes
) -> None:
    """A zone such as '../../x' was taken as the region: it went into every request's
    endpoint choice and, with a newline, forged lines in the log and on stderr."""
    hostile.zone = zone
    chosen = resolve_endpoints(AwsConfig(), boto3.Session())
    assert chosen.local and chosen.ebs == DEFAULT_LOCAL_ENDPOINT
    assert "\n" not in chosen.why and "../" not in chosen.why


def test_a_good_region_still_chosen(hostile: type[_Hostile]) -> None:
    hostile.zone = b"us-gov-west-1a"
    chosen = resolve_endpoints(AwsConfig(), boto3.Session())
    assert (chosen.region, chosen.local) == ("us-gov-west-1", False)


def test_a_metadata_service_that_drips_its_answer_does_not_hold_the_command(
    hostile: type[_Hostile],
) -> None:
    """botocore's 1 s timeout is per read: an answer dripping a byte at a time held the
    command (mount, ls, diff) as long as the sender liked."""
    hostile.drip = True
    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(resolve_endpoints(AwsConfig(), boto3.Session())),
        daemon=True,
    )
    started = time.monotonic()
    worker.start()
    worker.join(60)  # hang guard; the drip would last 2000 s
    assert not worker.is_alive(), f"still waiting after {time.monotonic() - started:.0f} s"
    assert result and getattr(result[0], "local", False)
