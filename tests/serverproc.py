"""The local server as tests use it: a real ``python -m ebsfs server`` subprocess, and plain
boto3 helpers to upload an image into a snapshot and read one back.

Everything here talks to the server only as a client would (boto3 with ``endpoint_url``), so
tests of every layer can rely on it without knowing the server's internals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from ebsfs.core import checksum
from ebsfs.core.blocks import BLOCK_SIZE, BLOCKS_PER_GIB, ZERO_BLOCK
from ebsfs.options.config import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY

REGION = "us-east-1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
WAIT_COMPLETED = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortTakenError(RuntimeError):
    """The server could not listen on its port: another process holds it."""


class LocalServer:
    """``ebsfs server`` in a subprocess, on a free loopback port, with the dev key pair."""

    def __init__(self, data_dir: Path, *flags: str, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.flags: tuple[str, ...] = tuple(flags)
        self.port = port or free_port()
        self._may_move = port is None  # until it first listens: clients then know the port
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.access_key_id = DEV_ACCESS_KEY_ID
        self.secret_access_key = DEV_SECRET_ACCESS_KEY
        self.region = REGION
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "ebsfs", "server",
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--access-key-id", self.access_key_id,
            "--secret-access-key", self.secret_access_key,
            *self.flags,
        ]

    def start(self) -> None:
        """Start the server and wait until its port accepts connections. A port of our own
        choosing that another process took meanwhile (parallel test workers) is chosen anew."""
        for _attempt in range(3):
            try:
                self._start_once()
                self._may_move = False
                return
            except PortTakenError:
                if not self._may_move:
                    raise
                self.port = free_port()
                self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._start_once()
        self._may_move = False

    def _start_once(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("server already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        logged_before = log.tell()
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, text = self.proc.returncode, self.log_text()
                self.proc = None
                taken = "cannot listen on" in text[logged_before:]
                raise (PortTakenError if taken else RuntimeError)(
                    f"ebsfs server exited with {code}:\n{text}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.5
            ):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"ebsfs server did not listen within {START_TIMEOUT}s:\n"
                           f"{self.log_text()}")

    def log_text(self) -> str:
        """What the server wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM, then wait (SIGKILL if it does not go in time)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None

    def restart(self, *flags: str) -> None:
        """Stop if running, then start on the same port and data dir (new flags if given)."""
        self.stop()
        if flags:
            self.flags = tuple(flags)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        """os.environ plus what points AWS SDKs and the CLI at this server."""
        env = dict(os.environ)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.pop(name, None)
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key_id,
            AWS_SECRET_ACCESS_KEY=self.secret_access_key,
            AWS_DEFAULT_REGION=self.region,
            AWS_REGION=self.region,
            AWS_ENDPOINT_URL_EBS=self.endpoint_url,
            AWS_ENDPOINT_URL_EC2=self.endpoint_url,
            AWS_EC2_METADATA_DISABLED="true",
        )
        return env

    def client(self, service: str, max_attempts: int = 1, **config: Any) -> Any:
        """A boto3 client for ``service`` pointed at this server."""
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=botocore.config.Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=5,
                read_timeout=30,
                **config,
            ),
        )

    def ebs(self, **kwargs: Any) -> Any:
        return self.client("ebs", **kwargs)

    def ec2(self, **kwargs: Any) -> Any:
        return self.client("ec2", **kwargs)

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _chunks(data_or_path: bytes | str | Path) -> tuple[int, Any]:
    if isinstance(data_or_path, bytes | bytearray):
        data = bytes(data_or_path)

        def gen_bytes() -> Any:
            for off in range(0, len(data), BLOCK_SIZE):
                yield off // BLOCK_SIZE, data[off:off + BLOCK_SIZE]

        return len(data), gen_bytes()
    path = Path(data_or_path)

    def gen_file() -> Any:
        with open(path, "rb") as f:
            i = 0
            while chunk := f.read(BLOCK_SIZE):
                yield i, chunk
                i += 1

    return path.stat().st_size, gen_file()


def put_block(ebs: Any, snapshot_id: str, index: int, data: bytes) -> None:
    """One PutSnapshotBlock with the right checksum."""
    ebs.put_snapshot_block(
        SnapshotId=snapshot_id,
        BlockIndex=index,
        BlockData=data,
        DataLength=BLOCK_SIZE,
        Checksum=checksum.block_checksum(data),
        ChecksumAlgorithm="SHA256",
    )


def complete(ebs: Any, snapshot_id: str, digests: dict[int, bytes]) -> str:
    """CompleteSnapshot with the count and LINEAR aggregate of ``digests`` (index -> raw)."""
    resp = ebs.complete_snapshot(
        SnapshotId=snapshot_id,
        ChangedBlocksCount=len(digests),
        Checksum=checksum.linear_aggregate(digests[i] for i in sorted(digests)),
        ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR",
    )
    return str(resp["Status"])


def wait_state(ec2: Any, snapshot_id: str, timeout: float = WAIT_COMPLETED) -> dict[str, Any]:
    """Poll DescribeSnapshots until the snapshot is no longer pending; returns its record."""
    deadline = time.monotonic() + timeout
    while True:
        snap: dict[str, Any] = ec2.describe_snapshots(
            OwnerIds=["self"], SnapshotIds=[snapshot_id]
        )["Snapshots"][0]
        if snap["State"] != "pending":
            return snap
        if time.monotonic() > deadline:
            raise TimeoutError(f"{snapshot_id} still pending after {timeout}s")
        time.sleep(0.05)


def upload_image(
    ebs: Any,
    ec2: Any,
    data_or_path: bytes | str | Path,
    volume_size_gib: int | None = None,
    *,
    parent: str | None = None,
    name: str | None = None,
    description: str | None = None,
) -> str:
    """Store an image as a new completed snapshot with plain boto3; returns its id.

    Whole-zero chunks are skipped unless a parent is given (then every chunk is written, so
    that zeros replace the parent's data). The size defaults to the image rounded up to GiB.
    """
    size, chunks = _chunks(data_or_path)
    if volume_size_gib is None:
        volume_size_gib = max(1, -(-size // (1 << 30)))
    kwargs: dict[str, Any] = {"VolumeSize": volume_size_gib}
    if parent:
        kwargs["ParentSnapshotId"] = parent
    if description:
        kwargs["Description"] = description
    if name:
        kwargs["Tags"] = [{"Key": "Name", "Value": name}]
    snapshot_id = str(ebs.start_snapshot(**kwargs)["SnapshotId"])
    digests: dict[int, bytes] = {}
    for index, chunk in chunks:
        if len(chunk) < BLOCK_SIZE:
            chunk = chunk + bytes(BLOCK_SIZE - len(chunk))
        if parent is None and chunk == ZERO_BLOCK:
            continue
        put_block(ebs, snapshot_id, index, chunk)
        digests[index] = checksum.digest(chunk)
    complete(ebs, snapshot_id, digests)
    state = wait_state(ec2, snapshot_id)
    if state["State"] != "completed":
        raise RuntimeError(f"{snapshot_id} ended in {state['State']}: {state.get('StateMessage')}")
    return snapshot_id


def list_blocks(ebs: Any, snapshot_id: str) -> tuple[dict[int, str], int]:
    """Every (index -> token) of a completed snapshot, following NextToken; and VolumeSize."""
    tokens: dict[int, str] = {}
    kwargs: dict[str, Any] = {"SnapshotId": snapshot_id, "MaxResults": 10000}
    volume = 0
    while True:
        page = ebs.list_snapshot_blocks(**kwargs)
        volume = page.get("VolumeSize", volume)
        for b in page["Blocks"]:
            tokens[b["BlockIndex"]] = b["BlockToken"]
        if not page.get("NextToken"):
            return tokens, volume
        kwargs["NextToken"] = page["NextToken"]


def get_block(ebs: Any, snapshot_id: str, index: int, token: str) -> bytes:
    """One GetSnapshotBlock, its checksum verified."""
    resp = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=index, BlockToken=token)
    data: bytes = resp["BlockData"].read()
    if checksum.block_checksum(data) != resp["Checksum"]:
        raise ValueError(f"{snapshot_id}[{index}] failed its checksum")
    return data


def download_image(
    ebs: Any, snapshot_id: str, path: str | Path | None = None, *, length: int | None = None
) -> bytes | None:
    """Read a completed snapshot back with plain boto3, zeros for holes.

    Returns the bytes (VolumeSize GiB of them, or only the first ``length``), or writes the
    whole volume to ``path`` (sparse) and returns None.
    """
    tokens, volume = list_blocks(ebs, snapshot_id)
    total = volume * BLOCKS_PER_GIB * BLOCK_SIZE
    if path is None:
        total = total if length is None else min(length, total)
        out = bytearray(-(-total // BLOCK_SIZE) * BLOCK_SIZE)
        for index, token in sorted(tokens.items()):
            if index * BLOCK_SIZE >= total:
                break
            out[index * BLOCK_SIZE:(index + 1) * BLOCK_SIZE] = get_block(
                ebs, snapshot_id, index, token)
        return bytes(out[:total])
    with open(path, "wb") as f:
        f.truncate(total)
        for index, token in sorted(tokens.items()):
            f.seek(index * BLOCK_SIZE)
            f.write(get_block(ebs, snapshot_id, index, token))
    return None
