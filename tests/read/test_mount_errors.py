"""Bad input: errno of SPEC.md through the kernel; one clear line from a mount that cannot be."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.mounting import MountProc, ebsfs
from tests.serverproc import free_port, upload_image

pytestmark = pytest.mark.timeout(120)
BLOCK = 512 * 1024


def _errno(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args)
    return int(info.value.errno)


def _one_clear_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebsfs: "), proc.stderr
    return lines[0]


def test_completed_snapshots_refuse_changes(server, mount_factory, tmp_path: Path) -> None:
    sid = upload_image(server.ebs(), server.ec2(), os.urandom(BLOCK), name="keep")
    m = mount_factory(server)
    snap = m.path / sid
    assert _errno(os.stat, m.path / "snap-0123456789abcdef0") == errno.ENOENT
    assert _errno(os.stat, m.path / "not-a-snapshot") == errno.ENOENT
    assert _errno(os.stat, m.path / "by-name" / "nothing") == errno.ENOENT
    assert _errno(os.open, snap, os.O_WRONLY) == errno.EROFS
    assert _errno(os.open, snap, os.O_RDWR) == errno.EROFS
    assert _errno(os.truncate, snap, 0) == errno.EROFS
    assert _errno(os.unlink, snap) == errno.EROFS
    assert _errno(os.rename, snap, m.path / "other") == errno.EROFS
    assert _errno(os.mkdir, m.path / "dir") == errno.EROFS
    assert _errno(os.setxattr, snap, "user.ebsfs.description", b"x") == errno.EROFS
    assert _errno(os.chmod, snap, 0o644) == errno.EROFS
    assert _errno(os.unlink, m.path / "by-name" / "keep") == errno.EROFS
    assert _errno(os.open, m.path / "created", os.O_CREAT | os.O_WRONLY) == errno.EROFS
    # nothing changed
    assert os.listdir(m.path) == ["by-name", "new", "parts", "scratch", sid]
    stats = json.loads(ebsfs("stats", "--json", str(m.path), check=True).stdout)
    assert stats["errors"]["EROFS"] >= 10
    table = ebsfs("stats", str(m.path), check=True).stdout
    assert "read.cache_max_bytes" in table


def test_read_only_mount_refuses_new_files(server, mount_factory) -> None:
    m = mount_factory(server, "--read-only")
    assert _errno(os.open, m.path / "new" / "x", os.O_CREAT | os.O_WRONLY) == errno.EROFS


def test_allow_delete_removes_a_snapshot(server, mount_factory) -> None:
    sid = upload_image(server.ebs(), server.ec2(), os.urandom(BLOCK))
    m = mount_factory(server, "--allow-delete")
    os.unlink(m.path / sid)
    assert sid not in os.listdir(m.path)
    listed = server.ec2().describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert sid not in {s["SnapshotId"] for s in listed}


def test_snapshot_option_needs_no_ec2(server, tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK)
    sid = upload_image(server.ebs(), server.ec2(), data)
    other = upload_image(server.ebs(), server.ec2(), os.urandom(BLOCK))
    # an EC2 endpoint that answers nothing: the mount must not need it
    env = server.env()
    env["AWS_ENDPOINT_URL_EC2"] = f"http://127.0.0.1:{free_port()}"
    with MountProc(server, tmp_path / "snaponly", "--snapshot", sid, env=env) as m:
        assert os.listdir(m.path) == ["by-name", "new", "parts", "scratch", sid]
        assert (m.path / sid).read_bytes()[: 2 * BLOCK] == data
        assert _errno(os.stat, m.path / other) == errno.ENOENT


def test_mount_startup_errors_are_one_line(server, mount_factory, tmp_path: Path) -> None:
    env = server.env()
    missing = _one_clear_line(ebsfs("mount", str(tmp_path / "missing"), env=env))
    assert "does not exist" in missing
    m = mount_factory(server)
    busy = ebsfs("mount", str(m.path), env=env)
    assert busy.returncode == 6
    assert "already" in _one_clear_line(busy)

    target = tmp_path / "target"
    target.mkdir()
    bad_env = dict(env, AWS_SECRET_ACCESS_KEY="wrong-secret")
    denied = ebsfs("mount", str(target), env=bad_env)
    assert denied.returncode == 4, denied.stderr
    _one_clear_line(denied)
    assert not os.path.ismount(target)

    nosnap = ebsfs("mount", str(target), "--snapshot", "snap-0123456789abcdef0", env=env)
    assert nosnap.returncode == 3, nosnap.stderr
    assert "snap-0123456789abcdef0" in _one_clear_line(nosnap)
    assert not os.path.ismount(target)

    down = dict(env, AWS_ENDPOINT_URL_EBS=f"http://127.0.0.1:{free_port()}")
    down["AWS_ENDPOINT_URL_EC2"] = down["AWS_ENDPOINT_URL_EBS"]
    unreachable = ebsfs("mount", str(target), "--max-attempts", "1", env=down)
    assert unreachable.returncode == 5, unreachable.stderr
    _one_clear_line(unreachable)
    assert not os.path.ismount(target)


def test_daemon_mode_returns_once_mounted_and_umount_stops_it(
    server, mount_factory, tmp_path: Path
) -> None:
    data = os.urandom(BLOCK)
    sid = upload_image(server.ebs(), server.ec2(), data, name="d")
    m = mount_factory(server, foreground=False)
    assert os.path.ismount(m.path)
    pid = int(os.getxattr(m.path, "user.ebsfs.pid"))
    assert (m.path / "by-name" / "d").read_bytes()[:BLOCK] == data
    ebsfs("umount", str(m.path), env=server.env(), check=True)
    assert not os.path.ismount(m.path)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert sid


def test_ls_lists_every_state(server) -> None:
    env = server.env()
    sid = upload_image(server.ebs(), server.ec2(), os.urandom(BLOCK), name="listed")
    pending = server.ebs().start_snapshot(VolumeSize=2)["SnapshotId"]
    out = ebsfs("ls", env=env, check=True).stdout
    header, *rows = out.splitlines()
    columns = ["SNAPSHOT", "STATE", "TIER", "SIZE", "NAME", "PARENT", "PROGRESS", "STARTED"]
    assert header.split() == columns
    by_id = {r.split()[0]: r.split() for r in rows}
    assert by_id[sid][1:3] == ["completed", "standard"] and by_id[sid][5] == "listed"
    assert by_id[pending][1] == "pending"
    listed = json.loads(ebsfs("ls", "--json", env=env, check=True).stdout)
    assert {s["snapshot_id"] for s in listed} == {sid, pending}


def test_filter_shows_only_matching_snapshots(server, mount_factory) -> None:
    ebs, ec2 = server.ebs(), server.ec2()
    prod = upload_image(ebs, ec2, os.urandom(BLOCK), name="prod-disk")
    test = upload_image(ebs, ec2, os.urandom(BLOCK), name="test-disk")
    ec2.create_tags(Resources=[prod], Tags=[{"Key": "Env", "Value": "prod"}])
    ec2.create_tags(Resources=[test], Tags=[{"Key": "Env", "Value": "test"}])
    m = mount_factory(server, "--filter", "tag:Env=prod")
    assert os.listdir(m.path) == ["by-name", "new", "parts", "scratch", prod]
    assert os.listdir(m.path / "by-name") == ["prod-disk"]
    assert os.getxattr(m.path / prod, "user.ebsfs.tag.Env") == b"prod"
    # a lookup by id of a snapshot the filter leaves out finds nothing either
    assert _errno(os.stat, m.path / test) == errno.ENOENT


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_unmount_cleanly(server, mount_factory, signum: int) -> None:
    m = mount_factory(server)
    assert m.proc is not None
    m.proc.send_signal(signum)
    assert m.proc.wait(30) == 0
    assert not os.path.ismount(m.path)
    assert "Traceback" not in m.log_text()


def test_a_signal_before_the_mount_first_answers_is_a_clean_stop(tmp_path: Path) -> None:
    # The start-up stat of the mount point fails once the unmount has begun (ECONNABORTED):
    # after a signal that is the requested stop, not an error; without one it still is.
    import trio

    from ebsfs.daemon.run import _announce_when_answering

    gone = str(tmp_path / "gone")
    announced: list[bool] = []

    async def attempt(stopping: trio.Event) -> None:
        await _announce_when_answering(gone, lambda: announced.append(True), 0, stopping)

    stopping = trio.Event()
    stopping.set()
    trio.run(attempt, stopping)
    assert announced == []
    with pytest.raises(FileNotFoundError):
        trio.run(attempt, trio.Event())
    assert announced == []


def test_ls_takes_the_aws_table_of_the_configuration_file(server, tmp_path: Path) -> None:
    """`ebsfs ls` reads [aws] (endpoint, profile...) from the file; the [mount] keys choose
    what a mount shows (only completed snapshots, its filters, its owner), not what is listed."""
    ebs, ec2 = server.ebs(), server.ec2()
    prod = upload_image(ebs, ec2, os.urandom(BLOCK), name="prod")
    other = upload_image(ebs, ec2, os.urandom(BLOCK), name="other")
    ec2.create_tags(Resources=[prod], Tags=[{"Key": "Env", "Value": "prod"}])
    profiles = tmp_path / "aws-config"
    profiles.write_text(
        f"[profile good]\naws_access_key_id = {server.access_key_id}\n"
        f"aws_secret_access_key = {server.secret_access_key}\n"
        f"[profile bad]\naws_access_key_id = {server.access_key_id}\n"
        "aws_secret_access_key = not-the-secret\n"
    )
    conf = tmp_path / "ebsfs.toml"
    conf.write_text(
        f'[aws]\nendpoint_url = "{server.endpoint_url}"\nprofile = "good"\n\n'
        f'[mount]\nfilters = ["tag:Env=prod"]\nowner = "123456789012"\nsnapshots = ["{prod}"]\n'
    )
    env = {
        k: v for k, v in server.env().items()
        if not k.startswith(("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY", "AWS_SECRET", "EBSFS_"))
    }
    env.update(AWS_CONFIG_FILE=str(profiles), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))

    def listed(*args: str, environ: dict[str, str] = env) -> set[str]:
        out = ebsfs("ls", "--json", *args, env=environ, check=True).stdout
        return {s["snapshot_id"] for s in json.loads(out)}

    assert listed("--config", str(conf)) == {prod, other}
    assert listed(environ={**env, "EBSFS_CONFIG": str(conf)}) == {prod, other}
    assert listed("--config", str(conf), "--filter", "tag:Env=prod") == {prod}
    # The file's profile signs the requests: one with a wrong secret is refused.
    bad = tmp_path / "bad.toml"
    bad.write_text(conf.read_text().replace('profile = "good"', 'profile = "bad"'))
    denied = ebsfs("ls", "--config", str(bad), env=env)
    assert denied.returncode == 4, denied.stderr
    _one_clear_line(denied)
