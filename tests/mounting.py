"""A real ``ebsfs mount`` in a subprocess, against a LocalServer, for end-to-end tests.

    with MountProc(server, tmp_path / "mnt", "--cache-size", "64MiB") as m:
        data = (m.path / snapshot_id).read_bytes()

``start`` runs ``python -m ebsfs mount MOUNTPOINT --foreground`` (or daemonised with
``foreground=False``) with the server's environment, waits until the directory is a mount
point, and fails at once with the daemon's log if the process died first. ``stop`` always
leaves the directory unmounted: ``ebsfs umount``, else SIGTERM, else a lazy unmount. The
``mount_factory`` fixture (import it into a conftest) stops every mount it made, even when
the test failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.serverproc import LocalServer

MOUNT_TIMEOUT = 30.0
UMOUNT_TIMEOUT = 60.0


def ebsfs(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120.0, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ebsfs ARGS`` and capture its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "ebsfs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ebsfs {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def wait_for(condition: Callable[[], object], timeout: float = 30.0, every: float = 0.05) -> bool:
    """Poll ``condition`` until it is true; False once ``timeout`` seconds passed without.

    A hang guard, not a timing check: give a generous bound and assert the result (or go
    on regardless, when waiting is only a courtesy)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True


@contextlib.contextmanager
def kernel_mounted(source: Path | str, target: Path, *options: str) -> Iterator[Path]:
    """``mount -o OPTIONS SOURCE TARGET`` (an image with ``loop``, or a device); unmounted
    afterwards."""
    target.mkdir(parents=True, exist_ok=True)
    opts = ["-o", ",".join(options)] if options else []
    subprocess.run(["mount", *opts, str(source), str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, timeout=60)


@contextlib.contextmanager
def loop_device(path: Path, *flags: str) -> Iterator[str]:
    """A read-only loop device over ``path`` (``losetup -r FLAGS``), detached afterwards."""
    losetup = ["losetup", "-f", "--show", "-r", *flags, str(path)]
    dev = subprocess.run(losetup, check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def drop_page_cache(path: Path) -> None:
    """Drop the kernel's cached pages of ``path``: the next read reaches the daemon (or disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def lazy_unmount(path: Path) -> None:
    """Detach a mount whatever state its daemon is in."""
    for cmd in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0:
                return


class MountProc:
    """One ``ebsfs mount`` process."""

    def __init__(
        self,
        server: LocalServer,
        mountpoint: Path,
        *flags: str,
        spool_dir: Path | None = None,
        foreground: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.server = server
        self.path = Path(mountpoint)
        self.flags = flags
        self.spool_dir = spool_dir or self.path.parent / f"{self.path.name}-spool"
        self.foreground = foreground
        self.env = env if env is not None else server.env()
        self.log_path = self.path.parent / f"{self.path.name}-mount.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ebsfs", "mount", str(self.path)]
        if "--spool-dir" not in self.flags:
            cmd += ["--spool-dir", str(self.spool_dir)]
        cmd += list(self.flags)
        if self.foreground:
            cmd.append("--foreground")
        else:
            cmd += ["--log-file", str(self.log_path)]
        return cmd

    def log_text(self) -> str:
        """What the daemon logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = MOUNT_TIMEOUT) -> MountProc:
        self.path.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        if not self.foreground:
            done = subprocess.run(
                self.command(), env=self.env, capture_output=True, text=True, timeout=timeout
            )
            if done.returncode != 0 or not os.path.ismount(self.path):
                raise AssertionError(
                    f"ebsfs mount exited {done.returncode}: {done.stderr}\n{self.log_text()}"
                )
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=log)
        proc = self.proc
        wait_for(lambda: os.path.ismount(self.path) or proc.poll() is not None, timeout)
        if os.path.ismount(self.path):
            return self
        if proc.poll() is not None:
            raise AssertionError(
                f"ebsfs mount exited {proc.returncode} before mounting:\n{self.log_text()}"
            )
        self.stop()
        raise AssertionError(f"ebsfs mount did not mount within {timeout}s:\n{self.log_text()}")

    def stop(self) -> None:
        """Unmount (``ebsfs umount``); never leaves the mount point mounted."""
        try:
            if os.path.ismount(self.path):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    ebsfs("umount", str(self.path), env=self.env, timeout=UMOUNT_TIMEOUT)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(UMOUNT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            if os.path.ismount(self.path):
                lazy_unmount(self.path)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL the daemon (the crash case) and detach the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        lazy_unmount(self.path)
        self.proc = None

    def __enter__(self) -> MountProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[Callable[..., MountProc]]:
    """Start mounts: ``mount_factory(server, "--read-only")``; all unmounted at teardown."""
    made: list[MountProc] = []

    def make(
        server: LocalServer,
        *flags: str,
        name: str | None = None,
        foreground: bool = True,
        spool_dir: Path | None = None,
    ) -> MountProc:
        mnt = tmp_path / (name or f"mnt{len(made)}")
        m = MountProc(server, mnt, *flags, foreground=foreground, spool_dir=spool_dir)
        made.append(m)
        return m.start()

    try:
        yield make
    finally:
        for m in reversed(made):
            m.stop()
