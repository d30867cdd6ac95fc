"""Which endpoint a command chooses, and why: flags, environment, the configuration file, the
EC2 instance metadata (a loopback fake here), and the local server when nothing names one."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import boto3
import pytest

from ebsfs.aws.api import resolve_endpoints
from ebsfs.options.config import DEFAULT_LOCAL_ENDPOINT, AwsConfig
from ebsfs.options.settings import aws_config
from tests.serverproc import LocalServer


class _Metadata(http.server.BaseHTTPRequestHandler):
    """The two requests botocore's region lookup makes (IMDSv2: a token, then the zone)."""

    zone = "eu-west-3b"
    seen: ClassVar[list[str]] = []

    def do_PUT(self) -> None:
        self.seen.append(f"PUT {self.path}")
        self._answer(b"a-token" if self.path == "/latest/api/token" else None)

    def do_GET(self) -> None:
        self.seen.append(f"GET {self.path}")
        ok = self.path == "/latest/meta-data/placement/availability-zone/"
        self._answer(self.zone.encode() if ok else None)

    def _answer(self, body: bytes | None) -> None:
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metadata() -> Iterator[str]:
    """A fake instance metadata service on loopback; yields its base URL."""
    _Metadata.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS setting at all in this process: no region, endpoint, profile or credentials."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "EBSFS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


def _resolve(aws: AwsConfig) -> object:
    return resolve_endpoints(aws, boto3.Session(region_name=aws.region))


@pytest.mark.usefixtures("bare_env")
def test_the_instance_metadata_region_selects_aws(
    metadata: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata)
    chosen = _resolve(AwsConfig())
    assert chosen.ebs is None and chosen.region == "eu-west-3" and not chosen.local
    assert "EC2 instance metadata" in chosen.describe()
    assert "GET /latest/meta-data/placement/availability-zone/" in _Metadata.seen


@pytest.mark.usefixtures("bare_env")
def test_metadata_disabled_means_the_local_server_and_no_request(
    metadata: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    chosen = _resolve(AwsConfig())
    assert chosen.ebs == DEFAULT_LOCAL_ENDPOINT and chosen.local
    assert "local server" in chosen.describe()
    assert _Metadata.seen == []


@pytest.mark.usefixtures("bare_env")
def test_no_metadata_answer_means_the_local_server(monkeypatch: pytest.MonkeyPatch) -> None:
    # A loopback port nobody listens on: refused at once.
    with socket_closed_port() as port:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{port}/")
        chosen = _resolve(AwsConfig())
    assert chosen.ebs == DEFAULT_LOCAL_ENDPOINT and chosen.local


@pytest.mark.usefixtures("bare_env")
def test_a_configured_region_wins_over_the_metadata_and_says_where_it_came_from(
    metadata: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata)
    conf = tmp_path / "ebsfs.toml"
    conf.write_text('[aws]\nregion = "ap-south-1"\n')
    chosen = _resolve(aws_config({"config": str(conf)}))
    assert chosen.region == "ap-south-1" and not chosen.local
    assert f"{conf} [aws] region" in chosen.describe()
    assert _Metadata.seen == []
    monkeypatch.setenv("AWS_REGION", "sa-east-1")
    chosen = _resolve(aws_config({"config": str(conf)}))
    assert chosen.region == "sa-east-1" and "from AWS_REGION" in chosen.describe()


def _bare_cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EBSFS_"))}
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        EBSFS_MAX_ATTEMPTS="1",
        **extra,
    )
    return env


def test_missing_credentials_name_the_file_and_key_that_chose_aws(tmp_path: Path) -> None:
    conf = tmp_path / "ebsfs.toml"
    conf.write_text('[aws]\nregion = "us-east-1"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "ebsfs", "ls", "--config", str(conf)],
        env=_bare_cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "no usable AWS credentials" in last
    assert f"{conf} [aws] region" in last, last
    assert "Traceback" not in proc.stderr


def test_ls_says_which_endpoint_and_why(server: LocalServer, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ebsfs", "ls", "--endpoint-url", server.endpoint_url],
        env=_bare_cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"endpoint: {server.endpoint_url} (endpoint from --endpoint-url)" in proc.stderr
    assert "endpoint:" not in proc.stdout


class socket_closed_port:
    """A loopback port that was just free (connections to it are refused)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        pass
