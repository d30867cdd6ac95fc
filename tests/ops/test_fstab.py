"""mount.fuse3's argv shape translated to ``ebsfs mount`` arguments."""

import pytest

from ebsfs.core.errors import UsageError
from ebsfs.options import fstab

COMMANDS = ("mount", "umount", "ls", "server", "diff")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ebsfs", "/mnt/s", "-o", "dev,suid"], ["mount", "/mnt/s"]),
        (["/mnt/s", "-o", "rw,dev,suid"], ["mount", "/mnt/s"]),
        (
            ["ebsfs", "/mnt/s", "-o", "ro,allow_other,_netdev,nofail,dev,suid,noatime"],
            ["mount", "/mnt/s", "--read-only", "--allow-other"],
        ),
        (
            [
                "ebsfs",
                "/mnt/s",
                "-o",
                "endpoint_url=http://127.0.0.1:9537,region=eu-west-1,cache_size=1GiB,"
                "snapshot=snap-0a:snap-0b,snapshot=snap-0c,filter=tag:Env=prod,x-systemd.automount",
            ],
            [
                "mount",
                "/mnt/s",
                "--endpoint-url",
                "http://127.0.0.1:9537",
                "--region",
                "eu-west-1",
                "--cache-size",
                "1GiB",
                "--snapshot",
                "snap-0a",
                "--snapshot",
                "snap-0b",
                "--snapshot",
                "snap-0c",
                "--filter",
                "tag:Env=prod",
            ],
        ),
        (
            ["ebsfs", "/mnt/s", "-o", "read-ahead=4MiB", "-ocache-size=8M", "-n"],
            ["mount", "/mnt/s", "--read-ahead", "4MiB", "--cache-size", "8M"],
        ),
        (
            ["ebsfs", "/mnt/s", "-o", "dirty_limit=64MiB,writeback-delay=0.2"],
            ["mount", "/mnt/s", "--dirty-limit", "64MiB", "--writeback-delay", "0.2"],
        ),
        (["ebsfs", "/mnt/s", "-o", "upload_process"], ["mount", "/mnt/s", "--upload-process"]),
        (
            ["ebsfs", "/mnt/s", "-o", "io_timeout=10,connect-timeout=2,read_timeout=20,"
             "max_attempts=3,log_file=/var/log/ebsfs/s.log,scratch_limit=2GiB"],
            ["mount", "/mnt/s", "--io-timeout", "10", "--connect-timeout", "2", "--read-timeout",
             "20", "--max-attempts", "3", "--log-file", "/var/log/ebsfs/s.log",
             "--scratch-limit", "2GiB"],
        ),
        (
            ["ebsfs", "/mnt/s", "-o", "no_upload_process"],
            ["mount", "/mnt/s", "--no-upload-process"],
        ),
        (
            ["ebsfs", "/mnt/s", "-o", "config=/etc/ebsfs/a.toml,owner=self,allow_delete"],
            [
                "mount",
                "/mnt/s",
                "--config",
                "/etc/ebsfs/a.toml",
                "--owner",
                "self",
                "--allow-delete",
            ],
        ),
    ],
)
def test_translation(argv: list[str], expected: list[str]) -> None:
    assert fstab.is_helper_call(argv, COMMANDS)
    assert fstab.translate(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["mount", "/mnt/s"],
        ["ls"],
        ["--version"],
        ["diff", "snap-a", "snap-b"],
        ["/mnt/s"],
        ["mout", "/mnt/s"],
        ["ebsfs", "/mnt/s"],
        [],
    ],
)
def test_ordinary_command_lines_are_left_alone(argv: list[str]) -> None:
    assert not fstab.is_helper_call(argv, COMMANDS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ebsfs", "/m", "-o", "cache_sise=1G"], "unknown mount option 'cache_sise'"),
        (["ebsfs", "/m", "-o", "turbo"], "unknown mount option 'turbo'"),
        (["ebsfs", "/m", "-o", "region"], "mount option 'region' needs a value"),
        (["ebsfs", "/m", "-o", "region="], "mount option 'region' needs a value"),
        (["ebsfs", "/m", "-o", "ro=1"], "mount option 'ro' takes no value"),
        (["ebsfs", "/m", "-o"], "-o needs a value"),
        (["ebsfs", "/m", "--frob"], "unknown argument '--frob'"),
        (["a", "b", "c", "-o", "ro"], "expected SOURCE MOUNTPOINT"),
    ],
)
def test_bad_options_name_themselves(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        fstab.translate(argv)
