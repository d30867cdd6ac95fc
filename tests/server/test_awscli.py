"""The AWS CLI as a second, independent client: it finds the server through
AWS_ENDPOINT_URL_EBS/_EC2 (or --endpoint-url) and round-trips a block."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from tests.serverproc import LocalServer, upload_image


def _aws(server: LocalServer, *args: str, check: bool = True) -> Any:
    exe = shutil.which("aws", path=str(Path(sys.executable).parent)) or "aws"
    proc = subprocess.run([exe, "--output", "json", *args], env=server.env(),
                          capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc


def test_aws_cli_round_trip(server: LocalServer, tmp_path: Path) -> None:
    block = os.urandom(BLOCK_SIZE)
    src = tmp_path / "block.bin"
    src.write_bytes(block)
    started = _aws(server, "ebs", "start-snapshot", "--volume-size", "1",
                   "--description", "from the cli",
                   "--tags", "Key=Name,Value=cli")
    sid = started["SnapshotId"]
    assert started["Status"] == "pending" and started["BlockSize"] == BLOCK_SIZE
    put = _aws(server, "ebs", "put-snapshot-block", "--snapshot-id", sid, "--block-index", "5",
               "--block-data", str(src), "--data-length", str(BLOCK_SIZE),
               "--checksum", checksum.block_checksum(block), "--checksum-algorithm", "SHA256")
    assert put["Checksum"] == checksum.block_checksum(block)
    aggregate = checksum.linear_aggregate([checksum.digest(block)])
    done = _aws(server, "ebs", "complete-snapshot", "--snapshot-id", sid,
                "--changed-blocks-count", "1", "--checksum", aggregate,
                "--checksum-algorithm", "SHA256", "--checksum-aggregation-method", "LINEAR")
    assert done["Status"] == "pending"
    described = _aws(server, "ec2", "describe-snapshots", "--owner-ids", "self",
                     "--snapshot-ids", sid)["Snapshots"][0]
    assert described["State"] == "completed" and described["VolumeId"] == "vol-ffffffff"
    assert described["Tags"] == [{"Key": "Name", "Value": "cli"}]
    listed = _aws(server, "ebs", "list-snapshot-blocks", "--snapshot-id", sid)
    assert [b["BlockIndex"] for b in listed["Blocks"]] == [5]
    out = tmp_path / "out.bin"
    got = _aws(server, "ebs", "get-snapshot-block", "--snapshot-id", sid, "--block-index", "5",
               "--block-token", listed["Blocks"][0]["BlockToken"], str(out))
    assert got["Checksum"] == checksum.block_checksum(block)
    assert out.read_bytes() == block


def test_aws_cli_sees_boto3_snapshots_and_errors(server: LocalServer) -> None:
    sid = upload_image(server.ebs(), server.ec2(), os.urandom(BLOCK_SIZE), 1, name="boto3")
    env_less = _aws(server, "--endpoint-url", server.endpoint_url, "ec2", "describe-snapshots",
                    "--filters", "Name=tag:Name,Values=boto3")
    assert [s["SnapshotId"] for s in env_less["Snapshots"]] == [sid]
    missing = _aws(server, "ec2", "describe-snapshots", "--snapshot-ids",
                   "snap-0123456789abcdef0", check=False)
    assert missing.returncode != 0 and "InvalidSnapshot.NotFound" in missing.stderr
    bad = _aws(server, "ebs", "list-snapshot-blocks", "--snapshot-id", sid,
               "--max-results", "99", check=False)
    assert bad.returncode != 0
    assert "ValidationException" in bad.stderr or "Invalid value" in bad.stderr
