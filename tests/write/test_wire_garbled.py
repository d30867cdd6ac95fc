"""The mount's end of the upload process's socket, against a child that answers garbage: every
answer that is not a whole, well-formed one is a transient error of the put, never a result
(docs/architecture.md, the write path)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from ebsfs.aws.api import Api
from ebsfs.core.errors import BackendUnavailableError
from ebsfs.options.config import AwsConfig
from ebsfs.write.upload import PutProcess

#: Says it is ready, then answers every request with the bytes of the file argv[1].
CHILD = textwrap.dedent("""
    import json, socket, struct, sys
    answer = open(sys.argv[1], "rb").read()
    sock = socket.socket(fileno=int(sys.argv[2].split(",")[0]))
    def exact(n):
        got = b""
        while len(got) < n:
            more = sock.recv(n - len(got))
            if not more:
                sys.exit(0)
            got += more
        return got
    exact(struct.unpack("!I", exact(4))[0])
    body = json.dumps({"ready": True}).encode()
    sock.sendall(struct.pack("!I", len(body)) + body)
    while True:
        args, data = struct.unpack("!II", exact(8))
        exact(args)
        exact(data)
        sock.sendall(struct.pack("!I", len(answer)) + answer)
""")


def _puts(tmp_path: Path, answer: bytes) -> PutProcess:
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "answer").write_bytes(answer)
    # Never reached: the scripted child answers every put itself.
    aws = AwsConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1")
    puts = PutProcess(aws, Api(aws), 1, command=[
        sys.executable, str(tmp_path / "child.py"), str(tmp_path / "answer")])
    puts.answer_timeout = 30.0  # a hang guard only
    return puts


GARBLED = {
    # No "ok" said: read as ok None, "an all-zero block, not stored", and the block was lost.
    "empty object": b"{}",
    "error not a record": json.dumps({"error": "boom"}).encode(),
    # A digest that is not one: a TypeError out of the put (a crash), or b"" taken as stored.
    "digest a number": json.dumps({"ok": 5}).encode(),
    "digest a list": json.dumps({"ok": [1]}).encode(),
    "digest not base64": json.dumps({"ok": "!!!"}).encode(),
    "digest too short": json.dumps({"ok": "AAAA"}).encode(),
}


@pytest.mark.parametrize("answer", list(GARBLED.values()), ids=list(GARBLED))
def test_a_garbled_answer_to_a_spooled_put_is_a_transient_error(
    tmp_path: Path, answer: bytes
) -> None:
    puts = _puts(tmp_path, answer)
    try:
        with pytest.raises(BackendUnavailableError, match="garbled"):
            puts.put_spooled_block("snap-1", 0, "/etc/hostname", 0, False)
    finally:
        puts.close()


def test_json_nested_thousands_deep_does_not_take_the_connection_with_it(
    tmp_path: Path,
) -> None:
    # A RecursionError went out of the put, and its connection was neither given back nor
    # the child replaced: every later put waited for a free connection, for ever.
    puts = _puts(tmp_path, b"[" * 100_000 + b"]" * 100_000)
    try:
        for _ in range(2):
            with pytest.raises(BackendUnavailableError, match="upload process exited"):
                puts.put_block("snap-1", 0, b"x" * 10, "AAAA")
        assert puts.started == 2  # a new child for the second put
    finally:
        puts.close()


def test_a_huge_error_message_is_cut(tmp_path: Path) -> None:
    answer = {"error": {"type": "ApiError", "message": "m" * 900_000, "kind": "retry"}}
    puts = _puts(tmp_path, json.dumps(answer).encode())
    try:
        with pytest.raises(Exception) as caught:
            puts.put_block("snap-1", 0, b"x" * 10, "AAAA")
        assert 0 < len(str(caught.value)) <= 4096
    finally:
        puts.close()
