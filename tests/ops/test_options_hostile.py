"""The option layers against an unlucky operator and a hostile local user: values and files
that must be refused in one line with exit 2 (never a traceback, a hang or a memory blow-up).
"""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from ebsfs.cli import main
from ebsfs.core.errors import UsageError
from ebsfs.options import settings
from ebsfs.options.settings import EMPTY

#: Hang guard of a subprocess (never a timing assertion).
GUARD = 60


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``ebsfs argv`` in-process; it must end with exit 2 and one line on stderr."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebsfs: "), err
    return lines[0]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- numbers too large for a float: a TOML integer has no bound ----


@pytest.mark.parametrize(
    ("section", "key"),
    [("mount", "refresh"), ("mount", "io_timeout"), ("aws", "connect_timeout"),
     ("server", "latency_ms"), ("server", "throttle_rate")],
)
def test_toml_integer_too_large_for_a_number_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, key: str
) -> None:
    conf = _write(tmp_path / "c.toml", f"[{section}]\n{key} = {'9' * 400}\n")
    line = _one_line_exit_2(["ls", "--config", str(conf)], capsys)
    assert f"{section}.{key}" in line


def test_toml_integer_of_thousands_of_digits_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # tomllib's int() raises ValueError past 4300 digits, not TOMLDecodeError.
    conf = _write(tmp_path / "c.toml", f"[mount]\ncache_size = {'9' * 5000}\n")
    line = _one_line_exit_2(["ls", "--config", str(conf)], capsys)
    assert "not valid TOML" in line


@pytest.mark.parametrize("value", ["[" * 5000 + "]" * 5000, "{a=" * 3000 + "1" + "}" * 3000])
def test_toml_nested_thousands_deep_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    conf = _write(tmp_path / "c.toml", f"[mount]\nsnapshots = {value}\n")
    line = _one_line_exit_2(["ls", "--config", str(conf)], capsys)
    assert "not valid TOML" in line


# ---- [server] listen: the file's rule and the flag's rule must agree ----


@pytest.mark.parametrize("listen", ["127.0.0.1:009537", "127.0.0.1:\u0669\u0665\u0663\u0667",
                                    "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:+80"])
def test_server_listen_from_file_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str
) -> None:
    conf = _write(tmp_path / "c.toml", f'[server]\nlisten = "{listen}"\n')
    argv = ["server", "--config", str(conf), "--data-dir", str(tmp_path / "d")]
    line = _one_line_exit_2(argv, capsys)
    assert "server.listen" in line


def test_server_listen_from_environment_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EBSFS_SERVER_LISTEN", "127.0.0.1:009537")
    conf = _write(tmp_path / "c.toml", "")
    argv = ["server", "--config", str(conf), "--data-dir", str(tmp_path / "d")]
    line = _one_line_exit_2(argv, capsys)
    assert "EBSFS_SERVER_LISTEN" in line


# ---- max_concurrency sizes urllib3's pool, which is filled slot by slot ----


@pytest.mark.parametrize("value", ["100000000", "1025"])
def test_max_concurrency_beyond_the_bound_is_refused(value: str) -> None:
    with pytest.raises(UsageError, match="EBSFS_MAX_CONCURRENCY: expected at most 1024"):
        settings.mount_config("/mnt/x", {}, config=EMPTY,
                              environ={"EBSFS_MAX_CONCURRENCY": value})
    with pytest.raises(UsageError, match="--max-concurrency: expected at most 1024"):
        settings.mount_config("/mnt/x", {"max_concurrency": value}, config=EMPTY, environ={})
    with pytest.raises(UsageError, match=r"aws\.max_pool_connections"):
        settings.parse_config(f"[aws]\nmax_pool_connections = {value}\n", "c.toml")
    assert settings.mount_config(
        "/mnt/x", {"max_concurrency": "1024"}, config=EMPTY, environ={}
    ).max_concurrency == 1024


@pytest.mark.parametrize(
    "value", ["\u0665", "+5", "5_0", "0x10", "1e3", "\u00a05", "5\u2003", "\x1c5", "\u30005"]
)
def test_counts_take_ascii_digits_only(value: str) -> None:
    # int() takes all of these; a count in a unit file or the environment should not.
    with pytest.raises(UsageError, match="EBSFS_MAX_CONCURRENCY: expected a whole number"):
        settings.mount_config("/mnt/x", {}, config=EMPTY,
                              environ={"EBSFS_MAX_CONCURRENCY": value})


def test_max_attempts_is_bounded() -> None:
    # botocore waits up to 20 s between attempts: a typo of a few digits hid a dead endpoint
    # for days.
    with pytest.raises(UsageError, match="--max-attempts: expected at most 50"):
        settings.mount_config("/mnt/x", {"max_attempts": "5000"}, config=EMPTY, environ={})
    with pytest.raises(UsageError, match=r"aws\.max_attempts"):
        settings.parse_config("[aws]\nmax_attempts = 51\n", "c.toml")


# ---- the configuration file itself ----


def _run_ebsfs(argv: list[str], limit_memory: bool = False) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        # Reading /dev/zero whole would take every byte of the machine's memory.
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-m", "ebsfs", *argv],
        capture_output=True, text=True, timeout=GUARD,
        preexec_fn=limit if limit_memory else None,
        env={k: v for k, v in os.environ.items() if not k.startswith(("EBSFS_", "AWS_"))},
    )


def test_config_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "ebsfs.toml"
    os.mkfifo(fifo)
    done = _run_ebsfs(["ls", "--config", str(fifo)])
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"ebsfs: configuration file {fifo} is not a regular file"


def test_config_device_is_refused_not_read_whole() -> None:
    done = _run_ebsfs(["ls", "--config", "/dev/zero"], limit_memory=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "ebsfs: configuration file /dev/zero is not a regular file"


def test_config_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_exit_2(["ls", "--config", str(tmp_path)], capsys)
    assert str(tmp_path) in line


def test_config_larger_than_any_configuration_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("#" * (2 << 20) + "\n[mount]\ncache_size = 'lots'\n")
    line = _one_line_exit_2(["ls", "--config", str(conf)], capsys)
    assert "larger than" in line


def test_world_writable_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Any local user could point a root mount at their own endpoint or directories.
    conf = _write(tmp_path / "c.toml", "[mount]\ncache_size = 'lots'\n")
    conf.chmod(0o666)
    line = _one_line_exit_2(["ls", "--config", str(conf)], capsys)
    assert "writable by every user" in line
    conf.chmod(0o644)
    line = _one_line_exit_2(["ls", "--config", str(conf)], capsys)
    assert "mount.cache_size" in line


def test_config_dev_null_still_means_no_settings() -> None:
    # The idiom of tests and scripts: EBSFS_CONFIG=/dev/null reads no file.
    config = settings.load_config("/dev/null", environ={})
    assert dict(config.sections) == {} and dict(config.mounts) == {}


# ---- an endpoint URL botocore cannot use, from any layer ----


@pytest.mark.parametrize("url", ["notaurl", "http://[::1", "127.0.0.1:9537"])
def test_unusable_endpoint_url_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    url: str,
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL_EC2",
                 "EBSFS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EBSFS_CONFIG", "/dev/null")
    line = _one_line_exit_2(["ls", "--endpoint-url", url], capsys)
    assert "ebs endpoint URL not usable" in line and "--endpoint-url" in line
    conf = _write(tmp_path / "c.toml", f'[aws]\nendpoint_url = "{url}"\n')
    line = _one_line_exit_2(["ls", "--config", str(conf)], capsys)
    assert f"{conf} [aws] endpoint_url" in line
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    line = _one_line_exit_2(["ls"], capsys)
    assert "AWS_ENDPOINT_URL" in line


def test_unusable_ec2_endpoint_alone_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ec2 client is made at its first use, after the ebs one was fine.
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("EBSFS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("EBSFS_CONFIG", "/dev/null")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EBS", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", "notaurl")
    line = _one_line_exit_2(["ls"], capsys)
    assert "ec2 endpoint URL not usable" in line


# ---- a timeout of 0 is no wait at all: urllib3 refuses it (a traceback before) ----


@pytest.mark.parametrize("key", ["connect_timeout", "read_timeout"])
def test_zero_http_timeout_is_refused_where_it_was_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    key: str,
) -> None:
    monkeypatch.setenv("EBSFS_CONFIG", "/dev/null")
    flag = "--" + key.replace("_", "-")
    with pytest.raises(UsageError, match=f"^{flag}: expected a number above 0"):
        settings.mount_config("/mnt/x", {key: "0"}, config=EMPTY, environ={})
    conf = _write(tmp_path / "c.toml", f"[aws]\n{key} = 0\n")
    line = _one_line_exit_2(["ls", "--config", str(conf)], capsys)
    assert f"aws.{key}: expected a number above 0" in line
    monkeypatch.setenv("EBSFS_" + key.upper(), "0.0")
    line = _one_line_exit_2(["ls", "--endpoint-url", "http://127.0.0.1:1"], capsys)
    assert f"EBSFS_{key.upper()}: expected a number above 0" in line


def test_zero_timeout_unit_names_the_file_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _write(tmp_path / "c.toml", "[server]\ntimeout_unit = 0\n")
    argv = ["server", "--config", str(conf), "--data-dir", str(tmp_path / "d")]
    line = _one_line_exit_2(argv, capsys)
    assert "server.timeout_unit: expected a number above 0" in line


# ---- a region botocore refuses: exit 1 with no origin before ----


@pytest.mark.parametrize("name", ["eu west", "a/b", "123", "-eu", "eu-\u0661"])
def test_bad_region_is_refused_where_it_was_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "EBSFS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EBSFS_CONFIG", "/dev/null")
    url = ["--endpoint-url", "http://127.0.0.1:1"]
    line = _one_line_exit_2(["ls", *url, f"--region={name}"], capsys)
    assert line.startswith("ebsfs: --region: expected a region name")
    conf = _write(tmp_path / "c.toml", f'[aws]\nregion = "{name}"\n')
    line = _one_line_exit_2(["ls", *url, "--config", str(conf)], capsys)
    assert "aws.region: expected a region name" in line
    monkeypatch.setenv("AWS_REGION", name)
    line = _one_line_exit_2(["ls", *url], capsys)
    assert "AWS_REGION: expected a region name" in line


def test_empty_config_flag_is_refused_not_replaced_by_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``--config "$CFG"`` with CFG unset read $EBSFS_CONFIG (or /etc/ebsfs/ebsfs.toml).
    other = _write(tmp_path / "other.toml", "[mount]\ncache_size = 'lots'\n")
    monkeypatch.setenv("EBSFS_CONFIG", str(other))
    line = _one_line_exit_2(["ls", "--config", ""], capsys)
    assert line == "ebsfs: --config: expected a path, not an empty one"


# ---- fstab ----


def test_fstab_user_mount_passes_user_equals_name() -> None:
    # libmount's mnt_optstr_fix_user: a user mount of an fstab line with ``user`` runs the
    # helper with ``user=<username>``; docs/operations.md lists ``user`` as accepted.
    from ebsfs.options import fstab

    assert fstab.translate(["ebsfs", "/mnt/s", "-o", "ro,user=alice,nodev,nosuid"]) == [
        "mount", "/mnt/s", "--read-only"
    ]


def test_config_of_another_user_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # /tmp/ebsfs.toml made by someone else, read by root's `ebsfs mount --config ...`.
    if os.geteuid() != 0:
        pytest.fail("needs root to give the file to another user")
    conf = _write(tmp_path / "c.toml", "[mount]\ncache_size = 'lots'\n")
    os.chown(conf, 12345, 12345)
    line = _one_line_exit_2(["ls", "--config", str(conf)], capsys)
    assert "belongs to another user (uid 12345)" in line


def test_server_takes_every_log_level_the_mount_takes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ebsfs", "server", "--log-level", "critical", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
