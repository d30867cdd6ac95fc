"""Unit tests of the small shared modules: sizes, checksums, error tree, CLI edge."""

import subprocess
import sys

import pytest

from ebsfs.core import checksum, errors
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.sizes import format_size, parse_size


# Payloads and aggregates from ebs-direct-api.md §4.3, observed on AWS.
def _payload(name: str) -> bytes:
    line = f"stackd-ebs-synthetic-{name}\n".encode()
    return (line * (BLOCK_SIZE // len(line) + 1))[:BLOCK_SIZE]


A, B, C, ZERO = _payload("a"), _payload("b"), _payload("c"), bytes(BLOCK_SIZE)


def test_block_checksums_match_aws_vectors() -> None:
    assert checksum.block_checksum(A) == "Qib0wLZSCPxxAsnoZ1mqGTwYYUfxBvjcHbuEUOOwNdw="
    assert checksum.block_checksum(B) == "7MZ7lYcAJrKN1JmUX5CDaVV97bthlt/bgN4AmbQDHTA="
    assert checksum.block_checksum(C) == "4b2+EkHNyDn49FNHyinzwIPoVBW30eVGlR/lZ/NPTvE="
    assert checksum.block_checksum(ZERO) == "B4VNL+8pega6gWheZgwzLeNtXRjVRpJ9MNqtbX/aFUE="


def test_linear_aggregate_matches_aws_vectors() -> None:
    blocks = {0: B, 3: A, 7: ZERO, 2047: C}
    digests = [checksum.digest(blocks[i]) for i in sorted(blocks)]
    assert checksum.linear_aggregate(digests) == "Pq34jf4xh07iqiQpo/morRl/xL06mqy1ERimH+Hypi8="
    one = checksum.linear_aggregate([checksum.digest(A)])
    assert one == "hm74cqkUPpcI9ua01PNSVN2PLTzQAAMPsYCbeHfLIX4="
    # The single-block aggregate is not the block's own checksum.
    assert one != checksum.block_checksum(A)


def test_aggregate_over_base64_text_is_the_wrong_answer() -> None:
    import base64
    import hashlib

    text = "".join(checksum.block_checksum(x) for x in (A, B)).encode()
    wrong = base64.b64encode(hashlib.sha256(text).digest()).decode()
    assert wrong == "xKsCRmgUxD/XwebcOgEG4QQ7TRElxCfHnSnsGQDz4pU="
    right = checksum.linear_aggregate([checksum.digest(A), checksum.digest(B)])
    assert right != wrong


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("512KiB", 512 << 10),
        ("1GiB", 1 << 30),
        ("8G", 8 << 30),
        ("1.5M", 3 << 19),
        ("2 MiB", 2 << 20),
        ("10kb", 10_000),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1XB", "-1G", "0.1"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|whole"):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(512 << 10) == "512 KiB"
    assert format_size(3 << 29) == "1.5 GiB"
    assert format_size(100) == "100 B"


def test_every_error_has_an_errno_and_exit_code() -> None:
    import errno

    assert errors.NotFoundError.errno == errno.ENOENT
    assert errors.ReadOnlyError.errno == errno.EROFS
    assert errors.FileTooLargeError.errno == errno.EFBIG
    assert errors.NotPermittedError.errno == errno.EPERM
    assert errors.InvalidValueError.errno == errno.EINVAL
    assert errors.AccessDeniedError.errno == errno.EACCES
    assert errors.UsageError.exit_code == 2


def test_cli_without_command_prints_help_and_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "ebsfs"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "usage: ebsfs" in proc.stderr
    assert "Traceback" not in proc.stderr
