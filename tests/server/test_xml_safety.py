"""Text a client stored comes back in EC2's XML: a character XML 1.0 cannot carry (a control
character, a lone surrogate, U+FFFE) made every DescribeSnapshots that listed the snapshot
unparsable (ResponseParserError) or a 500 (a surrogate cannot be encoded), for its owner and
for every account it is shared with, until it was deleted."""

import json
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pytest

from ebsfs.server.wire import xml_escape
from tests.server.conftest import Shared
from tests.server.raw import signed

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
BAD = ["a\x01b", "a\x00b", "a\ud800b", "a\ufffeb", "a\x1bb"]


def _describes(shared: Shared) -> None:
    assert shared.ec2.describe_snapshots(OwnerIds=["self"])["ResponseMetadata"][
        "HTTPStatusCode"] == 200


@pytest.mark.parametrize("text", BAD)
@pytest.mark.parametrize("field", ["Description", "TagKey", "TagValue", "KmsKeyArn"])
def test_start_snapshot_refuses_text_xml_cannot_carry(
    shared: Shared, field: str, text: str
) -> None:
    doc: dict[str, object] = {"VolumeSize": 1}
    if field == "Description":
        doc["Description"] = text
    elif field == "KmsKeyArn":
        doc["Encrypted"] = True
        doc["KmsKeyArn"] = f"arn:aws:kms:us-east-1:111122223333:key/{text}"
    else:
        key, value = (text, "v") if field == "TagKey" else ("k", text)
        doc["Tags"] = [{"Key": key, "Value": value}]
    answer = signed(shared.server, "POST", "/snapshots", json.dumps(doc).encode(), JSON)
    assert answer.status == 400 and answer.error_type == "ValidationException", answer
    _describes(shared)


@pytest.mark.parametrize("text", [t for t in BAD if t != "a\ud800b"])  # forms carry UTF-8
@pytest.mark.parametrize("field", ["Key", "Value"])
def test_create_tags_refuses_text_xml_cannot_carry(
    shared: Shared, field: str, text: str
) -> None:
    sid = shared.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    key, value = (text, "v") if field == "Key" else ("k", text)
    form = urlencode({"Action": "CreateTags", "Version": "2016-11-15", "ResourceId.1": sid,
                      "Tag.1.Key": key, "Tag.1.Value": value}).encode()
    answer = signed(shared.server, "POST", "/", form, FORM, service="ec2")
    assert answer.status == 400 and b"<Code>InvalidParameterValue</Code>" in answer.body
    ET.fromstring(answer.body)  # the error itself is readable
    _describes(shared)


def test_an_error_echoing_bad_text_is_readable(shared: Shared) -> None:
    form = urlencode({"Action": "DescribeSnapshots", "Version": "2016-11-15",
                      "Filter.1.Name": "bad\x01name", "Filter.1.Value.1": "x"}).encode()
    answer = signed(shared.server, "POST", "/", form, FORM, service="ec2")
    assert answer.status == 400
    ET.fromstring(answer.body)


def test_text_stored_by_an_older_server_is_shown_readably() -> None:
    escaped = xml_escape("".join(BAD) + "<&>\t\n\r\U0001f600")
    root = ET.fromstring(f"<a>{escaped}</a>".encode())
    assert root.text is not None and "\U0001f600" in root.text and "<&>" in root.text
