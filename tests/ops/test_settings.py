"""The configuration file and its precedence: command line, then environment, then file."""

import argparse
from pathlib import Path

import pytest

from ebsfs.cli import build_parser
from ebsfs.core.errors import UsageError
from ebsfs.options import settings
from ebsfs.options.config import MountConfig

CONFIG = """
[aws]
endpoint_url = "http://127.0.0.1:1"
region = "eu-west-1"
max_attempts = 3

[mount]
cache_size = "1GiB"
read_ahead = 1048576
snapshots = ["snap-0123456789abcdef0"]
filters = ["tag:Env=prod"]
read_only = true
refresh = 30
log_level = "debug"

[mount."/srv/backups"]
cache_size = "64MiB"
allow_delete = true

[server]
listen = "127.0.0.1:9999"
secret_access_key = "do-not-print-me"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "ebsfs.toml"
    path.write_text(CONFIG)
    return path


def _mount(path: Path, env: dict[str, str] | None = None, **given: object) -> MountConfig:
    args = {"config": str(path), **given}
    return settings.mount_config("/mnt/x", args, environ=env or {})


def test_file_values_are_used(config_file: Path) -> None:
    cfg = _mount(config_file)
    assert cfg.aws.endpoint_url == "http://127.0.0.1:1"
    assert cfg.aws.region == "eu-west-1"
    assert cfg.aws.max_attempts == 3
    assert cfg.cache_size == 1 << 30
    assert cfg.read_ahead == 1 << 20
    assert cfg.snapshots == ("snap-0123456789abcdef0",)
    assert cfg.filters == (("tag:Env", "prod"),)
    assert cfg.read_only is True
    assert cfg.refresh == 30.0
    assert cfg.log_level == "debug"
    # Untouched keys keep the dataclass defaults.
    assert cfg.max_concurrency == MountConfig("/").max_concurrency


def test_environment_overrides_file_and_flags_override_both(config_file: Path) -> None:
    env = {"EBSFS_CACHE_SIZE": "512MiB", "AWS_REGION": "us-west-2", "EBSFS_READ_ONLY": "no"}
    cfg = _mount(config_file, env)
    assert cfg.cache_size == 512 << 20
    assert cfg.aws.region == "us-west-2"
    assert cfg.read_only is False
    cfg = _mount(config_file, env, cache_size=4096, region="ap-south-1", read_only=None)
    assert cfg.cache_size == 4096
    assert cfg.aws.region == "ap-south-1"
    assert cfg.read_only is False


def test_botocore_endpoint_variables_outrank_the_file(config_file: Path) -> None:
    cfg = _mount(config_file, {"AWS_ENDPOINT_URL_EBS": "http://127.0.0.1:2"})
    # Left to botocore, which resolves the ebs and ec2 endpoints separately.
    assert cfg.aws.endpoint_url is None
    cfg = _mount(config_file, {"AWS_ENDPOINT_URL_EBS": "x"}, endpoint_url="http://h:3")
    assert cfg.aws.endpoint_url == "http://h:3"


def test_per_mountpoint_table(config_file: Path) -> None:
    cfg = settings.mount_config("/srv/backups/", {"config": str(config_file)}, environ={})
    assert cfg.cache_size == 64 << 20
    assert cfg.allow_delete is True
    assert cfg.read_only is True  # from [mount]


def test_flags_given_as_argparse_namespace(config_file: Path) -> None:
    ns = argparse.Namespace(config=str(config_file), cache_size="2GiB", foreground=True)
    cfg = settings.mount_config("/mnt/x", ns, environ={})
    assert cfg.cache_size == 2 << 30
    assert cfg.foreground is True


def test_write_tuning_flags_win_over_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "ebsfs.toml"
    path.write_text('[mount]\ndirty_limit = "32MiB"\nwriteback_delay = 2.0\n')
    env = {"EBSFS_DIRTY_LIMIT": "16MiB"}
    cfg = settings.mount_config("/mnt/x", {"config": str(path)}, environ=env)
    assert (cfg.dirty_limit, cfg.writeback_delay) == (16 << 20, 2.0)
    args = build_parser("mount").parse_args(
        ["mount", "/mnt/x", "--config", str(path), "--dirty-limit", "64MiB",
         "--writeback-delay", "0.25"]
    )
    cfg = settings.mount_config("/mnt/x", args, environ=env)
    assert (cfg.dirty_limit, cfg.writeback_delay) == (64 << 20, 0.25)


def test_config_path_from_environment(config_file: Path) -> None:
    cfg = settings.mount_config("/mnt/x", {}, environ={"EBSFS_CONFIG": str(config_file)})
    assert cfg.cache_size == 1 << 30


def test_default_path_may_be_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(settings, "DEFAULT_CONFIG_PATH", str(tmp_path / "none.toml"))
    assert settings.load_config(None, {}) is settings.EMPTY


def test_explicit_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"configuration file not found: .*nope\.toml"):
        settings.load_config(str(tmp_path / "nope.toml"), {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[mount]\ncache_sise = '1GiB'\n",
            "unknown key 'mount.cache_sise' \\(did you mean 'cache_size'",
        ),
        ("[mounts]\nx = 1\n", "unknown key 'mounts'"),
        ("[aws]\nregion = 'x'\nbogus = 1\n", "unknown key 'aws.bogus'"),
        ('[mount."/m"]\nfrobnicate = 1\n', "unknown key 'mount.\"/m\".frobnicate'"),
        ("[server]\nlistne = '127.0.0.1:1'\n", "unknown key 'server.listne'"),
        ("[mount]\ncache_size = 'lots'\n", "mount.cache_size: not a size: 'lots'"),
        ("[mount]\nread_only = 'maybe'\n", "mount.read_only: expected true or false"),
        ("[mount]\nfilters = ['Env']\n", "mount.filters: expected NAME=VALUE"),
        ("[mount]\nlog_level = 'loud'\n", "mount.log_level: expected one of"),
        ("[server]\nerror_rate = 2\n", "server.error_rate: expected a share"),
        ("[mount\n", "not valid TOML"),
        ("region = 'x'\n", "unknown key 'region' \\(it belongs in \\[aws\\]\\)"),
        ("aws = 'x'\n", "'aws' must be a table"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as info:
        settings.load_config(str(path), {})
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_environment_value_names_the_variable(config_file: Path) -> None:
    with pytest.raises(UsageError, match="EBSFS_MAX_CONCURRENCY: expected a whole number"):
        _mount(config_file, {"EBSFS_MAX_CONCURRENCY": "many"})


def test_secret_in_the_file_is_never_shown(config_file: Path) -> None:
    from ebsfs.core.redact import redact

    settings.load_config(str(config_file), {})
    assert "do-not-print-me" not in redact("key do-not-print-me leaked")


def test_server_values(config_file: Path) -> None:
    values = settings.server_values({"config": str(config_file), "listen": None}, environ={})
    assert values["listen"] == "127.0.0.1:9999"
    values = settings.server_values(
        {"config": str(config_file)}, environ={"EBSFS_SERVER_LISTEN": "127.0.0.1:1234"}
    )
    assert values["listen"] == "127.0.0.1:1234"


def test_every_config_field_can_be_set() -> None:
    from dataclasses import fields

    from ebsfs.options.config import AwsConfig, ServerConfig

    mount_fields = {f.name for f in fields(MountConfig)} - {"mountpoint", "aws", "foreground"}
    assert mount_fields == set(settings.SCHEMA["mount"])
    assert {f.name for f in fields(AwsConfig)} - {"origins"} == set(settings.SCHEMA["aws"])
    # --second-account is a flag only (a test aid): no environment or file key.
    flags_only = {"host", "port", "second_account", "faults"}  # --fault too
    server_fields = {f.name for f in fields(ServerConfig)} - flags_only | {"listen"}
    assert server_fields == set(settings.SCHEMA["server"])


def test_snapshot_ids_are_checked(config_file: Path) -> None:
    with pytest.raises(UsageError, match="--snapshot: not a snapshot id: 'bogus'"):
        _mount(config_file, snapshots=["bogus"])
    with pytest.raises(UsageError, match="EBSFS_SNAPSHOTS: not a snapshot id: 'snap-XYZ'"):
        _mount(config_file, {"EBSFS_SNAPSHOTS": "snap-0123456789abcdef0,snap-XYZ"})


def test_upload_process_is_left_to_the_machine_unless_set(tmp_path: Path) -> None:
    # None (decided at mount by the usable CPUs) unless a flag, the environment or the file
    # says; then exactly what it says.
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert _mount(empty, {}).upload_process is None
    assert _mount(empty, {"EBSFS_UPLOAD_PROCESS": "yes"}).upload_process is True
    assert _mount(empty, {"EBSFS_UPLOAD_PROCESS": "off"}).upload_process is False
    assert _mount(empty, {"EBSFS_UPLOAD_PROCESS": "off"}, upload_process=True).upload_process
    on = tmp_path / "on.toml"
    on.write_text("[mount]\nupload_process = true\n")
    assert _mount(on, {}).upload_process is True
