"""PutSnapshotBlock in a child process, so block uploads do not share the mount's GIL.

``PutProcess`` is the mount's ``BlockPuts``: each call goes to the child over a Unix socket of
its own and returns once AWS acknowledged the block, or raises the error ``Api`` raised there.
How the child starts, dies and is replaced: docs/architecture.md (the write path, PutProcess).
The child itself is ``ebsfs.write.uploadchild``; ``python -m ebsfs.write.upload`` runs it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

from ebsfs.core.errors import BackendUnavailableError, EbsfsError
from ebsfs.options.config import AwsConfig
from ebsfs.write.spooled import BlockPuts, PutBlock, put_file_block
from ebsfs.write.uploadchild import leave_the_mount, main, serve_connections
from ebsfs.write.wire import REQUEST, WireError, recv_json, send_frame, send_parts

log = logging.getLogger(__name__)

__all__ = ["PutProcess"]

#: Send and receive buffer of each end of the socket.
SOCKET_BUFFER = 4 << 20
#: Seconds a new child has to import boto3, build its clients and say it is ready.
START_TIMEOUT = 60.0
#: A child that died this many times within RESTART_WINDOW seconds is not started again.
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0


class PutProcess(BlockPuts):
    """``put_block`` through a child process; ``fallback`` (the mount's ``Api``) when the
    child cannot be used. Thread-safe: called from the mount's worker threads."""

    def __init__(
        self,
        aws: AwsConfig,
        fallback: PutBlock,
        threads: int,
        *,
        log_level: str = "WARNING",
        command: Sequence[str] | None = None,
    ) -> None:
        self.aws = aws
        self.fallback = fallback
        self.threads = max(1, threads)
        self.log_level = log_level
        self.command = list(command or (sys.executable, "-m", "ebsfs.write.upload"))
        # botocore gives up on its own after its attempts; this only catches a stuck child.
        self.answer_timeout = aws.max_attempts * (aws.connect_timeout + aws.read_timeout + 20.0)
        self._lock = threading.Lock()
        self._link: _Link | None = None
        self._deaths: list[float] = []
        self._disabled = False
        self._closed = False
        #: Counters for ``ebsfs stats``: children started, calls answered by the fallback.
        self.started = 0
        self.fallback_calls = 0

    def put_block(
        self, snapshot_id: str, index: int, data: bytes | memoryview, checksum_b64: str
    ) -> None:
        """PutSnapshotBlock of one full block, as ``Api.put_block``."""
        link = self._current()
        if link is None:
            self._count_fallback()
            self.fallback.put_block(snapshot_id, index, data, checksum_b64)
            return
        link.call({"op": "put", "args": [snapshot_id, index, checksum_b64]}, data,
                  self.answer_timeout)

    def put_spooled_block(
        self, snapshot_id: str, index: int, path: str, offset: int, skip_if_zero: bool
    ) -> bytes | None:
        """PutSnapshotBlock of the block at ``offset`` of the file ``path``, read and hashed by
        the child: its raw SHA256 digest, or None if it was all zeros and ``skip_if_zero``."""
        link = self._current()
        if link is None:
            self._count_fallback()
            return put_file_block(self.fallback, snapshot_id, index, path, offset, skip_if_zero)
        args = [snapshot_id, index, path, offset, skip_if_zero]
        answer = link.call({"op": "spooled", "args": args}, b"", self.answer_timeout)
        return None if answer is None else base64.b64decode(answer)

    def prefork(self) -> None:
        """Start the child now with ``fork()``: it shares the modules and the clients of
        ``fallback`` (the mount's ``Api``) that this process has loaded, so it costs no
        import and no client to build, and the first upload does not wait for it. Only
        while this process has a single thread (before the mount starts trio); a child
        started later (after one died) is a fresh ``python -m ebsfs.write.upload``."""
        with self._lock:
            if self._link is not None or self._closed or self._disabled:
                return
            try:
                link = _Link.fork(self.fallback, self.threads)
            except OSError as exc:
                log.warning("upload process not forked (%s); it starts at the first upload", exc)
                return
            self._link = link
            self.started += 1
        log.info("upload process %d forked", link.proc.pid)

    def close(self) -> None:
        """Stop the child (its socket closes; it exits); later calls use the fallback."""
        with self._lock:
            self._closed = True
            link, self._link = self._link, None
        if link is not None:
            link.close()

    def _count_fallback(self) -> None:
        with self._lock:
            self.fallback_calls += 1

    @property
    def pid(self) -> int | None:
        """The running child's pid, if there is one."""
        link = self._link
        return None if link is None or link.dead else link.proc.pid

    def _current(self) -> _Link | None:
        with self._lock:
            link = self._link
            if link is not None and not link.dead:
                return link
            if self._closed or self._disabled:
                return None
            now = time.monotonic()
            if link is not None:
                self._link = None
                self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW] + [now]
                if len(self._deaths) >= MAX_RESTARTS:
                    self._disabled = True
                    log.error(
                        "the upload process died %d times within %.0f s; "
                        "uploading in the mount's own threads from now on",
                        len(self._deaths),
                        RESTART_WINDOW,
                    )
                    return None
            try:
                link = _Link.start(self.command, self._settings(), self.threads)
            except (OSError, EbsfsError) as exc:
                self._disabled = True
                log.error(
                    "cannot start the upload process (%s); uploading in the mount's own threads",
                    exc,
                )
                return None
            self._link = link
            self.started += 1
            log.info("upload process %d started", link.proc.pid)
            return link

    def _settings(self) -> dict[str, Any]:
        return {"aws": asdict(self.aws), "threads": self.threads, "log_level": self.log_level}


class _Child(Protocol):
    """What ``_Link`` uses of its child: ``subprocess.Popen``'s, or ``_Forked``."""

    pid: int

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class _Forked:
    """A child made by ``os.fork()``, with the part of ``Popen``'s interface ``_Link`` uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.01)
        return code


def _socket_pairs(count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """(the mount's ends, the child's ends) of ``count`` Unix socket pairs."""
    ours: list[socket.socket] = []
    theirs: list[socket.socket] = []
    try:
        for _ in range(count):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            ours.append(a)
            theirs.append(b)
            # Room for a whole block: its send completes at once instead of waking the
            # reader for every piece of it.
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    except BaseException:
        for sock in ours + theirs:
            sock.close()
        raise
    return ours, theirs


class _Link:
    """One child process and its connections: a Unix socket pair per call that may run at
    once, so a call sends its request and reads its answer on a connection of its own, and in
    the child a thread per connection serves it. No thread hands anything to another on
    either side (a reader thread waking callers cost more CPU than the call itself)."""

    def __init__(self, proc: _Child, conns: list[socket.socket]) -> None:
        self.proc = proc
        self.dead = False
        self._conns = conns
        self._idle: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        for conn in conns:
            self._idle.put(conn)
        self._lock = threading.Lock()

    @classmethod
    def start(cls, command: Sequence[str], settings: dict[str, Any], connections: int) -> _Link:
        ours, theirs = _socket_pairs(connections)
        try:
            fds = [str(t.fileno()) for t in theirs]
            proc = subprocess.Popen(
                [*command, ",".join(fds)],
                pass_fds=[t.fileno() for t in theirs],
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches the mount, which then closes
                # the sockets, rather than killing uploads under it.
                start_new_session=True,
            )
        except BaseException:
            for sock in ours + theirs:
                sock.close()
            raise
        for sock in theirs:
            sock.close()
        link = cls(proc, ours)
        first = ours[0]
        try:
            first.settimeout(START_TIMEOUT)
            send_frame(first, settings)
            answer = recv_json(first)
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                raise WireError.from_json(answer["error"]).exception()
            if not isinstance(answer, dict) or answer.get("ready") is not True:
                raise BackendUnavailableError("the upload process did not start")
        except (OSError, EbsfsError, ValueError, EOFError) as exc:
            link._stop(kill=True)
            for sock in ours:
                sock.close()
            if isinstance(exc, EbsfsError):
                raise
            raise BackendUnavailableError(f"the upload process did not start: {exc}") from exc
        return link

    @classmethod
    def fork(cls, api: PutBlock, connections: int) -> _Link:
        ours, theirs = _socket_pairs(connections)
        try:
            pid = os.fork()
        except BaseException:
            for sock in ours + theirs:
                sock.close()
            raise
        if pid == 0:  # the child: serve until the mount closes the connections
            try:
                leave_the_mount([sock.fileno() for sock in theirs])
                serve_connections(api, theirs)
            finally:
                os._exit(1)
        for sock in theirs:
            sock.close()
        return cls(_Forked(pid), ours)

    def call(self, request: dict[str, Any], data: bytes | memoryview, timeout: float) -> Any:
        """Send ``request`` (and ``data``); the child's result, or its error raised."""
        if self.dead:
            raise BackendUnavailableError("PutSnapshotBlock: the upload process has exited")
        try:
            # The mount's limiter never lets more calls run than there are connections.
            conn = self._idle.get(timeout=timeout)
        except queue.Empty:
            raise BackendUnavailableError("PutSnapshotBlock: no free upload connection") from None
        body = json.dumps(request).encode()
        view = memoryview(data).cast("B")
        try:
            if conn.gettimeout() != timeout:  # a system call: only when it changes
                conn.settimeout(timeout)
            send_parts(conn, [REQUEST.pack(len(body), len(view)), body, view])
            answer = recv_json(conn)
        except TimeoutError:
            self._fail(f"did not answer within {timeout:.0f} s")
            raise BackendUnavailableError(
                f"PutSnapshotBlock: the upload process did not answer within {timeout:.0f} s"
            ) from None
        except (OSError, EOFError, ValueError) as exc:
            self._fail(f"exited ({exc or 'connection closed'})")
            raise BackendUnavailableError(
                f"PutSnapshotBlock: the upload process exited ({exc or 'connection closed'})"
            ) from None
        self._idle.put(conn)
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            raise WireError.from_json(answer["error"]).exception()
        if not isinstance(answer, dict):
            raise BackendUnavailableError("PutSnapshotBlock: a garbled answer")
        return answer.get("ok")

    def close(self) -> None:
        """Close the connections (the child then exits) and wait for it."""
        self._stop(kill=False)
        for conn in self._conns:
            conn.close()

    def _stop(self, kill: bool) -> None:
        # Shut down, not close: calls blocked on their connections wake up with end of file,
        # and no descriptor number is freed (and reused) under them.
        with self._lock:
            self.dead = True
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if kill and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.error("upload process %d does not exit after SIGKILL", self.proc.pid)

    def _fail(self, why: str) -> None:
        with self._lock:
            first = not self.dead
            self.dead = True
        if first:
            code = self.proc.poll()
            log.warning(
                "upload process %d %s%s; its puts are retried",
                self.proc.pid,
                why,
                "" if code is None else f" (exit status {code})",
            )
            # Calls still waiting on their connections fail now, not at their timeout.
            self._stop(kill=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
