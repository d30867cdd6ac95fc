"""The upload process (ebsfs/write/upload.py) against the real local server: what it stores, the
errors it carries back, and how it dies, is replaced, gives up and goes away with the mount."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebsfs.aws.api import Api
from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import BackendUnavailableError, ChecksumError, EbsfsError, NotFoundError
from ebsfs.options.config import AwsConfig
from ebsfs.write.upload import PutProcess
from tests.mounting import MountProc
from tests.serverproc import LocalServer, download_image, list_blocks, wait_state
from tests.write.helpers import seal, sh


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    srv = LocalServer(tmp_path_factory.mktemp("putproc") / "data")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _aws(server: LocalServer, **kwargs: Any) -> AwsConfig:
    return AwsConfig(endpoint_url=server.endpoint_url, region=server.region, **kwargs)


@pytest.fixture
def env(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The child inherits the environment: the dev key pair, as a mount run by tests has.
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def puts(server: LocalServer, env: None) -> Iterator[PutProcess]:
    aws = _aws(server)
    proc = PutProcess(aws, Api(aws), threads=4)
    try:
        yield proc
    finally:
        proc.close()


def _snapshot(server: LocalServer) -> str:
    return str(server.ebs().start_snapshot(VolumeSize=1)["SnapshotId"])


def _block(seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (BLOCK_SIZE // 32)


def _stored(server: LocalServer, snapshot_id: str, count: int) -> dict[int, bytes]:
    """The blocks of ``snapshot_id`` (sealed here with ``count`` blocks), read back."""
    ebs = server.ebs()
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=count)
    wait_state(server.ec2(), snapshot_id)
    tokens, _ = list_blocks(ebs, snapshot_id)
    image = download_image(ebs, snapshot_id, length=BLOCK_SIZE * 8) or b""
    return {i: image[i * BLOCK_SIZE:][:BLOCK_SIZE] for i in tokens}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (reaped later by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_blocks_are_stored_by_the_child(server: LocalServer, puts: PutProcess, tmp_path: Path):
    sid = _snapshot(server)
    one = _block(1)
    puts.put_block(sid, 0, one, checksum.block_checksum(one))
    assert puts.pid is not None and puts.pid != os.getpid()
    # A block in a file (as the spool holds it), read and hashed by the child.
    spool = tmp_path / "data"
    two = _block(2)
    spool.write_bytes(bytes(BLOCK_SIZE) + two + bytes(BLOCK_SIZE))
    assert puts.put_spooled_block(sid, 1, str(spool), BLOCK_SIZE, True) == checksum.digest(two)
    # All zeros: skipped when allowed (nothing sent), stored when not.
    assert puts.put_spooled_block(sid, 2, str(spool), 0, True) is None
    assert puts.put_spooled_block(sid, 3, str(spool), 2 * BLOCK_SIZE, False) == checksum.digest(
        bytes(BLOCK_SIZE)
    )
    # Past the end of the file reads as zeros, as the spool's unwritten slot bytes do.
    assert puts.put_spooled_block(sid, 4, str(spool), 3 * BLOCK_SIZE, True) is None
    assert _stored(server, sid, 3) == {0: one, 1: two, 3: bytes(BLOCK_SIZE)}
    assert (puts.started, puts.fallback_calls) == (1, 0)


def test_errors_come_back_as_the_api_raises_them(server: LocalServer, puts: PutProcess):
    api = Api(_aws(server))
    sid = _snapshot(server)
    data = _block(3)
    cases = [
        ("snap-0123456789abcdef0", 0, checksum.block_checksum(data)),  # no such snapshot
        (sid, 0, checksum.block_checksum(b"other bytes")),  # checksum mismatch
        (sid, 1 << 30, checksum.block_checksum(data)),  # index beyond the volume
    ]
    for snapshot_id, index, sent in cases:
        with pytest.raises(EbsfsError) as direct:
            api.put_block(snapshot_id, index, data, sent)
        with pytest.raises(EbsfsError) as through_child:
            puts.put_block(snapshot_id, index, data, sent)
        assert type(through_child.value) is type(direct.value)
        assert str(through_child.value) == str(direct.value)
        fields = ("kind", "code", "reason", "status")
        assert [getattr(through_child.value, f, None) for f in fields] == [
            getattr(direct.value, f, None) for f in fields]
    assert isinstance(direct.value, EbsfsError)
    with pytest.raises(NotFoundError):
        puts.put_block(cases[0][0], 0, data, cases[0][2])
    with pytest.raises(ChecksumError):
        puts.put_block(sid, 0, data, cases[1][2])
    # A spooled block whose file is gone: a plain, non-transient error.
    with pytest.raises(EbsfsError, match="cannot read block 0"):
        puts.put_spooled_block(sid, 0, "/nonexistent/data", 0, False)


def test_a_dead_child_is_replaced(server: LocalServer, puts: PutProcess):
    sid = _snapshot(server)
    data = _block(4)
    puts.put_block(sid, 0, data, checksum.block_checksum(data))
    first = puts.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert _wait_gone(first)
    # The first call after the death may find the dead link (transient error, which the
    # write layer retries); the next one runs in a new child.
    for attempt in range(3):
        try:
            puts.put_block(sid, 1, data, checksum.block_checksum(data))
            break
        except BackendUnavailableError:
            assert attempt < 2
    assert puts.pid not in (None, first)
    assert puts.started == 2 and puts.fallback_calls == 0
    assert set(_stored(server, sid, 2)) == {0, 1}


def test_the_child_outlives_its_starting_thread_and_stop_signals(
    server: LocalServer, puts: PutProcess
):
    # Trio retires idle worker threads: the child must not be tied to the one that made it.
    sid = _snapshot(server)
    data = _block(8)
    starter = threading.Thread(
        target=puts.put_block, args=(sid, 0, data, checksum.block_checksum(data))
    )
    starter.start()
    starter.join()
    pid = puts.pid
    assert pid is not None
    time.sleep(0.5)
    assert _alive(pid)
    # A service stop signals the whole unit: the child waits for the mount to close its socket.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(pid, signum)
    time.sleep(0.3)
    assert _alive(pid)
    puts.put_block(sid, 1, data, checksum.block_checksum(data))
    assert puts.pid == pid and puts.started == 1


def test_a_child_that_cannot_start_means_uploads_in_the_mount(
    server: LocalServer, env: None, caplog: pytest.LogCaptureFixture
):
    aws = _aws(server)
    broken = PutProcess(aws, Api(aws), 2, command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    sid = _snapshot(server)
    data = _block(5)
    with caplog.at_level(logging.ERROR, logger="ebsfs.write.upload"):
        broken.put_block(sid, 0, data, checksum.block_checksum(data))
    assert (broken.started, broken.fallback_calls) == (0, 1)
    assert "cannot start the upload process" in caplog.text
    assert set(_stored(server, sid, 1)) == {0}


def test_a_child_that_does_not_answer_is_killed(server: LocalServer, env: None, tmp_path: Path):
    # Says it is ready, then reads requests and never answers them.
    script = tmp_path / "mute.py"
    script.write_text(textwrap.dedent("""
        import json, socket, struct, sys, time
        sock = socket.socket(fileno=int(sys.argv[1].split(",")[0]))
        head = sock.recv(4)
        sock.recv(struct.unpack("!I", head)[0])
        body = json.dumps({"ready": True}).encode()
        sock.sendall(struct.pack("!I", len(body)) + body)
        while sock.recv(1 << 20):
            pass
        time.sleep(600)
    """))
    aws = _aws(server)
    mute = PutProcess(aws, Api(aws), 2, command=[sys.executable, str(script)])
    mute.answer_timeout = 1.0
    data = _block(6)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="did not answer within 1 s"):
        mute.put_block("snap-0123456789abcdef0", 0, data, checksum.block_checksum(data))
    assert time.monotonic() - started < 10
    assert mute._link is not None and mute._link.proc.poll() is not None  # killed
    assert mute._link.dead
    mute.close()


def test_close_stops_the_child_and_later_puts_run_in_the_mount(
    server: LocalServer, puts: PutProcess
):
    sid = _snapshot(server)
    data = _block(7)
    puts.put_block(sid, 0, data, checksum.block_checksum(data))
    pid = puts.pid
    assert pid is not None
    puts.close()
    assert _wait_gone(pid)
    puts.put_block(sid, 1, data, checksum.block_checksum(data))
    assert puts.fallback_calls == 1
    assert set(_stored(server, sid, 2)) == {0, 1}


def test_the_child_dies_with_the_mount(server: LocalServer, env: None, tmp_path: Path):
    # A stand-in for the mount: starts a child, prints its pid, then waits to be killed.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from ebsfs.aws.api import Api
                from ebsfs.options.config import AwsConfig
                from ebsfs.write.upload import PutProcess
                aws = AwsConfig(endpoint_url={server.endpoint_url!r}, region={server.region!r})
                p = PutProcess(aws, Api(aws), 2)
                p._current()
                print(p.pid, flush=True)
                time.sleep(600)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
        parent.wait()
        assert _wait_gone(child), "the upload process outlived a kill -9 of its mount"
    finally:
        parent.kill()


def test_mounts_upload_through_the_process_unless_told_not_to(server: LocalServer, tmp_path):
    # By default the child is used when the mount may run on two CPUs or more: on one it
    # only adds work. The flags decide either way.
    data = os.urandom(3 * BLOCK_SIZE)
    image = tmp_path / "img"
    image.write_bytes(data)
    everywhere = os.sched_getaffinity(0)
    one_cpu = {min(everywhere)}
    cases = (
        ((), everywhere, 1 if len(everywhere) >= 2 else 0),
        (("--no-upload-process",), everywhere, 0),
        ((), one_cpu, 0),
        (("--upload-process",), one_cpu, 1),
    )
    for n, (flags, cpus, starts) in enumerate(cases):
        # The mount inherits the CPUs of the thread that starts it.
        os.sched_setaffinity(0, cpus)
        try:
            m = MountProc(server, tmp_path / f"m{n}", *flags).start()
        finally:
            os.sched_setaffinity(0, everywhere)
        try:
            assert m.proc is not None
            assert os.sched_getaffinity(m.proc.pid) == cpus
            # Leaving it out by itself is said, with the way to have it anyway.
            said = "1 CPU usable" in m.log_text() and "--upload-process" in m.log_text()
            assert said is (not flags and len(cpus) == 1)
            target = m.path / "new" / f"p{n}"
            sh("truncate", "-s", "1G", target)
            sh("dd", f"if={image}", f"of={target}", "bs=1M", "conv=notrunc,fsync", "status=none")
            stats = json.loads(os.getxattr(m.path, "user.ebsfs.stats"))["write"]
            assert stats.get("upload_process_starts", 0) == starts
            assert stats.get("puts_in_mount_threads", 0) == 0
            assert stats["puts"] == 3
            sid = seal(target, server)
            assert download_image(server.ebs(), sid, length=len(data)) == data
        finally:
            m.stop()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def test_a_mount_forks_its_upload_process_and_it_keeps_none_of_the_mounts_files(
    server: LocalServer, tmp_path: Path
):
    m = MountProc(server, tmp_path / "m", "--max-concurrency", "4", "--upload-process").start()
    try:
        assert m.proc is not None
        children = _children(m.proc.pid)
        assert len(children) == 1, "the upload process is forked at mount time"
        child = children[0]
        fds = {
            int(fd): os.readlink(f"/proc/{child}/fd/{fd}") for fd in os.listdir(f"/proc/{child}/fd")
        }
        others = {fd: what for fd, what in fds.items() if fd > 2}
        # One connection per --max-concurrency, nothing else (no /dev/fuse, pipe, log file).
        assert len(others) == 4 and all(w.startswith("socket:") for w in others.values()), fds
        # Writing through it works, and a kill -9 of the mount takes it away too.
        data = os.urandom(2 * BLOCK_SIZE)
        target = m.path / "new" / "forked"
        sh("truncate", "-s", "1G", target)
        with open(target, "r+b") as f:
            f.write(data)
            os.fsync(f.fileno())
        stats = json.loads(os.getxattr(m.path, "user.ebsfs.stats"))["write"]
        assert (stats["upload_process_starts"], stats["puts"]) == (1, 2)
        m.kill()
        assert _wait_gone(child), "the upload process outlived a kill -9 of its mount"
    finally:
        m.stop()
