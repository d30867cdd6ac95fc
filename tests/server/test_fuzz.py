"""Fuzzing the live server: whatever arrives, as a request head or as the query, JSON or
form of a signed request, the answer is a well-formed 4xx (or a success, or a closed
connection), never a 500, a traceback or a server that stops answering."""

import json
import re
import socket
import string
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.conftest import Shared
from tests.server.raw import signed

STATUS = re.compile(rb"HTTP/1\.1 ([0-9]{3}) ")
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def _check_answer(out: bytes) -> None:
    if not out:
        return  # closed without an answer: allowed
    m = STATUS.match(out)
    assert m is not None, out[:300]
    assert int(m.group(1)) < 500, out[:600]


def _still_serving(shared: Shared) -> None:
    assert shared.server.running
    shared.ec2.describe_snapshots(OwnerIds=["self"])
    log = shared.server.log_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


_token = st.text(string.ascii_letters + string.digits + "!#$%&'*+.^_`|~-", min_size=1,
                 max_size=12)
_anything = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=30)
_method = st.one_of(st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE"]), _token, _anything)
_target = st.one_of(
    st.sampled_from(["/", "/snapshots", "/snapshots/snap-0123456789abcdef0/blocks/0",
                     "/snapshots/snap-0123456789abcdef0/blocks?maxResults=100",
                     "/snapshots/completion/snap-0123456789abcdef0", "*", ""]),
    st.builds(lambda a: "/" + a, _anything),
)
_header = st.tuples(st.one_of(_token, _anything, st.sampled_from(
    ["Content-Length", "Transfer-Encoding", "Host", "Authorization", "X-Amz-Date", "Expect",
     "Connection", "x-amz-Data-Length", "x-amz-Checksum"])), _anything)


@FUZZ
@given(method=_method, target=_target, version=st.sampled_from(
    ["HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1", ""]),
    headers=st.lists(_header, max_size=6), sep=st.sampled_from(["\r\n", "\n"]),
    body=st.binary(max_size=64))
def test_fuzzed_heads(shared: Shared, method: str, target: str, version: str,
                      headers: list[tuple[str, str]], sep: str, body: bytes) -> None:
    lines = [f"{method} {target} {version}"] + [f"{k}: {v}" for k, v in headers]
    data = (sep.join(lines) + sep + sep).encode("latin-1") + body
    _check_answer(_exchange(shared.server.port, data))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzzed_bytes(shared: Shared, data: bytes) -> None:
    _check_answer(_exchange(shared.server.port, data + b"\r\n\r\n"))


_text = st.text(max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children,
                                                                       max_size=4),
    max_leaves=12,
)
_members = st.fixed_dictionaries({}, optional={
    "VolumeSize": _json, "Timeout": _json, "ClientToken": _json, "Description": _json,
    "ParentSnapshotId": _json, "Encrypted": _json, "KmsKeyArn": _json, "Tags": _json,
})


@FUZZ
@given(doc=st.one_of(_json, _members))
def test_fuzzed_start_snapshot_json(shared: Shared, doc: object) -> None:
    body = json.dumps(doc).encode()
    answer = signed(shared.server, "POST", "/snapshots", body,
                    {"Content-Type": "application/json"})
    assert answer.status < 500 and answer.status != 403, answer.body[:400]


_qvalue = st.one_of(_text, st.integers().map(str), st.sampled_from(["", "-1", "1_0", "+1"]))
_qname = st.one_of(st.sampled_from(["maxResults", "startingBlockIndex", "pageToken",
                                    "firstSnapshotId", "blockToken"]), _text)


@FUZZ
@given(path=st.sampled_from(["/snapshots/{s}/blocks", "/snapshots/{s}/changedblocks",
                             "/snapshots/{s}/blocks/{i}"]),
       sid=st.one_of(st.just("snap-0123456789abcdef0"), _text),
       index=st.one_of(st.integers().map(str), _text),
       query=st.lists(st.tuples(_qname, _qvalue), max_size=4))
def test_fuzzed_queries(shared: Shared, path: str, sid: str, index: str,
                        query: list[tuple[str, str]]) -> None:
    target = path.format(s=quote(sid, safe=""), i=quote(index, safe=""))
    qs = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query)
    answer = signed(shared.server, "GET", target + (f"?{qs}" if qs else ""))
    assert answer.status < 500 and answer.status != 403, answer.body[:400]


_ec2_key = st.one_of(
    st.sampled_from(["Action", "Version", "MaxResults", "NextToken", "DryRun", "SnapshotId",
                     "Filter.1.Name", "Filter.1.Value.1", "Owner.1", "SnapshotId.1",
                     "ResourceId.1", "Tag.1.Key", "Tag.1.Value", "Filter.99999999999.Name"]),
    _text)
_action = st.sampled_from(["DescribeSnapshots", "DeleteSnapshot", "CreateTags", "DeleteTags",
                           "RunInstances", ""])


@FUZZ
@given(action=_action, params=st.lists(st.tuples(_ec2_key, _qvalue), max_size=6))
def test_fuzzed_ec2_forms(shared: Shared, action: str, params: list[tuple[str, str]]) -> None:
    pairs = [("Action", action), ("Version", "2016-11-15"), *params]
    body = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs).encode()
    answer = signed(shared.server, "POST", "/", body,
                    {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
                    service="ec2")
    assert answer.status < 500 and answer.status != 403, answer.body[:400]


def test_zz_server_survived_the_fuzzing(shared: Shared) -> None:
    _still_serving(shared)
