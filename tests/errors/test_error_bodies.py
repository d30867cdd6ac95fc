"""Error answers that are not AWS's (issue 13.6 attacked): a proxy's HTML or plain-text
answer, an empty body, a huge body. Each must become one clear ebsfs error: never a raw
botocore traceback, never "snapshot gone" for a 404 no AWS service sent, never a message of
megabytes."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from ebsfs.aws.api import Api
from ebsfs.core.errors import GONE, EbsfsError, NotFoundError, classify
from ebsfs.options.config import AwsConfig

SNAP = "snap-0123456789abcdef0"


class _Answers(http.server.BaseHTTPRequestHandler):
    status = 400
    body = b"Bad Request"
    content_type = "text/plain"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        cls = type(self)
        self.send_response(cls.status)
        self.send_header("Content-Type", cls.content_type)
        self.send_header("Content-Length", str(len(cls.body)))
        self.end_headers()
        self.wfile.write(cls.body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[tuple[str, type[_Answers]]]:
    handler = type("Handler", (_Answers,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s" * 40)


def _api(url: str) -> Api:
    return Api(AwsConfig(endpoint_url=url, region="us-east-1", max_attempts=1))


def test_an_ec2_answer_that_is_not_xml_is_an_ebsfs_error(
    proxy: tuple[str, type[_Answers]],
) -> None:
    url, handler = proxy
    for status, body in ((400, b"Bad Request"), (404, b""), (200, b"{}"), (403, b"nope")):
        handler.status, handler.body = status, body
        with pytest.raises(EbsfsError) as info:
            _api(url).describe_snapshots()
        assert "\n" not in str(info.value)


def test_ebsfs_ls_against_a_proxy_answering_plain_text_is_one_line_not_a_traceback(
    proxy: tuple[str, type[_Answers]],
) -> None:
    url, _ = proxy
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s" * 40,
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "ebsfs", "ls", "--endpoint-url", url, "--region", "us-east-1"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.startswith("ebsfs: "), done.stderr[-3000:]


def test_a_huge_error_body_makes_a_bounded_one_line_message(
    proxy: tuple[str, type[_Answers]],
) -> None:
    url, handler = proxy
    handler.status, handler.content_type = 400, "text/html"
    handler.body = b"<html>\n" + b"<p>proxy error</p>\n" * 200_000 + b"</html>"
    api = _api(url)
    for call in (lambda: api.list_blocks(SNAP), lambda: api.get_block(SNAP, 0, "t"),
                 lambda: api.put_block(SNAP, 0, b"\0" * 524288, "AAAA")):
        with pytest.raises(EbsfsError) as info:
            call()
        text = str(info.value)
        assert len(text) < 2000 and "\n" not in text, (len(text), text[:200])


def test_a_404_no_aws_service_sent_is_not_snapshot_gone(
    proxy: tuple[str, type[_Answers]],
) -> None:
    # AWS's 404s name their error (ResourceNotFoundException, with a Reason); a bare 404 from
    # a proxy or a wrong endpoint path says nothing about the snapshot: not "gone", which
    # waits out the read lag on reads and gives up a draft's snapshot on writes.
    assert classify("404", "", 404) != GONE
    assert classify("", "", 404) != GONE
    assert classify("ResourceNotFoundException", "", 404) == GONE
    url, handler = proxy
    handler.status, handler.content_type = 404, "text/html"
    handler.body = b"<html><body>404 Not Found</body></html>"
    api = _api(url)
    for call in (lambda: api.list_blocks(SNAP), lambda: api.get_block(SNAP, 0, "t"),
                 lambda: api.put_block(SNAP, 0, b"\0" * 524288, "AAAA"),
                 lambda: api.describe_snapshots([SNAP])):
        with pytest.raises(EbsfsError) as info:
            call()
        assert not isinstance(info.value, NotFoundError), info.value
