"""A password in a URL's user information (an endpoint behind an authenticating proxy) is a
secret too: masked in log lines and in the one-line errors commands print."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ebsfs.core import redact as redact_mod

PASSWORD = "HUNTER2-url-password"


@pytest.mark.parametrize(
    "text",
    [
        f"endpoint http://user:{PASSWORD}@127.0.0.1:9537/ chosen",
        f'Could not connect to the endpoint URL: "https://ops:{PASSWORD}@ebs.example:443/x"',
        f"['--endpoint-url', 'http://a:{PASSWORD}@h/']",
    ],
)
def test_a_url_password_is_masked_in_log_lines(text: str) -> None:
    cleaned = redact_mod.redact(text)
    assert PASSWORD not in cleaned
    assert "127.0.0.1" in cleaned or "ebs.example" in cleaned or "@h/" in cleaned


def test_a_url_without_a_password_is_unchanged() -> None:
    text = "http://127.0.0.1:9537/ and https://user@host/path and mailto:a@b"
    assert redact_mod.redact(text) == text


def test_a_command_error_shows_no_url_password(tmp_path: Path) -> None:
    """botocore masks a proxy's password in its errors, not an endpoint's: ``ebsfs ls``
    printed it whole on stderr."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "EBSFS_CONFIG": "/dev/null",
        "EBSFS_MAX_ATTEMPTS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ebsfs", "ls", "--endpoint-url",
         f"http://user:{PASSWORD}@127.0.0.1:9/"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 5, done.stderr
    assert "127.0.0.1:9" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_a_url_password_is_masked_in_a_logged_record(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "endpoint %s", (
        f"http://u:{PASSWORD}@127.0.0.1/",), None)
    redact_mod.RedactSecrets().filter(record)
    assert PASSWORD not in record.getMessage()
