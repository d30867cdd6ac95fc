"""PutSnapshotBlock in a child process, so that block uploads do not share the mount's GIL.

Writing through a mount is bound by Python on both of its sides: the trio thread answers
every FUSE request and writes the spool, and up to ``--max-concurrency`` worker threads run
botocore for each 512 KiB PutSnapshotBlock. In one process they share one GIL, and every
``write()`` of the user's ``dd`` waits until the trio thread wins it back from the upload
threads. :class:`PutProcess` is a drop-in for ``Api.put_block`` that hands each block to a
child (``python -m ebsfs.write.upload``) running the same ``Api.put_block`` in its own threads,
under its own GIL; the mount's worker thread only waits for the answer. A block wholly in
the spool goes as (file, offset): the child reads and hashes it itself.

The child has one Unix socket pair per call that may run at once (``--max-concurrency``):
a call takes an idle connection, sends its request and reads the answer on it, and one
thread of the child serves that connection; no thread wakes another on either side.

The contract is ``Api.put_block``'s: the call returns once AWS acknowledged the block, or
raises the ``ebsfs.core.errors`` exception ``Api`` raised in the child (class, message, code,
reason and status carried over), so the write layer's retries see exactly what they would
see in-process. The child:

* is forked by a writable mount when it starts (:meth:`PutProcess.prefork`, before trio
  runs: the child shares the modules and the clients already loaded, and keeps none of the
  mount's descriptors but its connections); one that replaces a dead child, or any child of
  a ``PutProcess`` not preforked, is a fresh ``python -m ebsfs.write.upload`` started at a put,
  which inherits the mount's environment (credentials resolve as they do for the mount;
  nothing secret is passed on its command line) and AWS settings;
* exits when a connection reaches end of file: the mount closed them (unmount), or the
  mount died, even by ``kill -9``, and the kernel closed them. (Not ``PR_SET_PDEATHSIG``:
  it fires when the *thread* that started the child ends, and trio retires idle worker
  threads.) Nothing else holds the mount's ends: later children are started with
  ``close_fds``, and SIGTERM, SIGINT and SIGHUP are ignored (a service stop signals every
  process of the unit, and the mount still stores what is dirty through the child);
* if it dies, the calls waiting on it fail with ``BackendUnavailableError`` (transient: the
  write layer retries them) and the next call starts a new one. If it cannot start, or dies
  three times within a minute, puts run in the mount's own threads from then on (the
  behaviour without this module), and the log says why.

Each wait is bounded (botocore's attempts times its timeouts, plus a margin); a child that
does not answer within it is killed and replaced.
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
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

from ebsfs.core import checksum, errors
from ebsfs.core.blocks import BLOCK_SIZE, ZERO_BLOCK
from ebsfs.core.errors import BackendUnavailableError, EbsfsError
from ebsfs.options.config import AwsConfig
from ebsfs.write.sink import PutApi

log = logging.getLogger(__name__)

__all__ = ["PutProcess"]

#: Request frame: length of the JSON arguments, length of the block (each connection carries
#: one call at a time, so frames need no id).
_REQUEST = struct.Struct("!II")
#: Answer frame (and the start-up frames): length of the JSON that follows.
_ANSWER = struct.Struct("!I")
#: The longest JSON a frame may carry (arguments, answers, the start-up settings).
_MAX_JSON = 1 << 20
#: The largest block a request may carry (a block is 512 KiB).
_MAX_DATA = 1 << 20
#: Send and receive buffer of each end of the socket.
SOCKET_BUFFER = 4 << 20
#: Seconds a new child has to import boto3, build its clients and say it is ready.
START_TIMEOUT = 60.0
#: A child that died this many times within RESTART_WINDOW seconds is not started again.
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0


class PutProcess:
    """``put_block`` through a child process; ``fallback`` (the mount's ``Api``) when the
    child cannot be used. Thread-safe: called from the mount's worker threads."""

    def __init__(
        self,
        aws: AwsConfig,
        fallback: PutApi,
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
            _send_frame(first, settings)
            answer = _recv_json(first)
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                raise _decode_error(answer["error"])
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
    def fork(cls, api: PutApi, connections: int) -> _Link:
        ours, theirs = _socket_pairs(connections)
        try:
            pid = os.fork()
        except BaseException:
            for sock in ours + theirs:
                sock.close()
            raise
        if pid == 0:  # the child: serve until the mount closes the connections
            try:
                _leave_the_mount([sock.fileno() for sock in theirs])
                _serve_connections(api, theirs)
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
            _send_parts(conn, [_REQUEST.pack(len(body), len(view)), body, view])
            answer = _recv_json(conn)
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
            raise _decode_error(answer["error"])
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


def put_file_block(
    api: PutApi,
    snapshot_id: str,
    index: int,
    path: str,
    offset: int,
    skip_if_zero: bool,
    buffer: bytearray | None = None,
) -> bytes | None:
    """Read the block at ``offset`` of ``path`` (into ``buffer`` if given), hash it and store
    it with ``api``: its raw digest, or None (nothing stored) if it is all zeros and
    ``skip_if_zero``."""
    data = bytearray(BLOCK_SIZE) if buffer is None else buffer
    view = memoryview(data)[:BLOCK_SIZE]
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [view], offset)
        finally:
            os.close(fd)
    except OSError as exc:
        # Not transient: the draft's spool went away (removed) or cannot be read.
        raise EbsfsError(f"cannot read block {index} from {path}: {exc.strerror}") from None
    if got < BLOCK_SIZE:  # bytes of a slot never written read as zeros
        view[got:] = bytes(BLOCK_SIZE - got)
    if skip_if_zero and view == ZERO_BLOCK:
        return None
    digest = checksum.digest(view)
    api.put_block(snapshot_id, index, view, checksum.b64(digest))
    return digest


# ---- wire format ------------------------------------------------------------------------------


def _send_parts(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """Send every part, in order, in as few system calls as the socket takes."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def _send_frame(sock: socket.socket, value: Any) -> None:
    body = json.dumps(value).encode()
    _send_parts(sock, [_ANSWER.pack(len(body)), body])


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError("connection closed")
        got += n


def _recv_json(sock: socket.socket) -> Any:
    head = bytearray(_ANSWER.size)
    _recv_exact(sock, memoryview(head))
    (length,) = _ANSWER.unpack(head)
    if length > _MAX_JSON:
        raise ValueError(f"a frame of {length} bytes")
    body = bytearray(length)
    _recv_exact(sock, memoryview(body))
    return json.loads(body)


def _encode_error(exc: EbsfsError) -> dict[str, Any]:
    attrs = {
        k: v for k, v in vars(exc).items() if isinstance(v, str | int | float | bool) or v is None
    }
    return {"type": type(exc).__name__, "message": str(exc), "attrs": attrs}


def _decode_error(answer: dict[str, Any]) -> EbsfsError:
    """The exception the child raised, rebuilt: only ``ebsfs.core.errors`` classes are made."""
    cls = getattr(errors, str(answer.get("type", "")), None)
    message = str(answer.get("message", "the upload process failed"))
    if not (isinstance(cls, type) and issubclass(cls, EbsfsError)):
        return BackendUnavailableError(message)
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    attrs = answer.get("attrs")
    if isinstance(attrs, dict):
        exc.__dict__.update(attrs)
    return exc


# ---- the child --------------------------------------------------------------------------------


def _serve(socks: list[socket.socket]) -> int:
    from ebsfs.aws.api import Api  # boto3 is imported here, in the child only

    first = socks[0]
    settings = _recv_json(first)
    logging.basicConfig(
        level=str(settings.get("log_level", "WARNING")).upper(),
        format="ebsfs upload process: %(levelname)s %(name)s: %(message)s",
    )
    try:
        api = Api(AwsConfig(**settings["aws"]))
    except EbsfsError as exc:
        _send_frame(first, {"error": _encode_error(exc)})
        return 1
    _send_frame(first, {"ready": True})
    _serve_connections(api, socks)
    return 0


def _leave_the_mount(keep: list[int]) -> None:
    """In a forked child: close every descriptor of the mount but ``keep`` and stdio (the
    pipe ``ebsfs mount`` waits on, the mount's log file...), log to stderr only, and ignore
    the stop signals."""
    last = -1
    for fd in [*sorted({0, 1, 2, *keep}), os.sysconf("SC_OPEN_MAX")]:
        if fd > last + 1:  # never an empty range: closerange(n, n) closes from n to the end
            os.closerange(last + 1, fd)
        last = fd
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("ebsfs upload process: %(levelname)s %(message)s"))
    logging.getLogger().handlers = [handler]
    _ignore_stop_signals()


def _ignore_stop_signals() -> None:
    # A service stop signals every process of the unit at once; the mount then still has to
    # store what is dirty through this process, and closes its connections when done.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def _serve_connections(api: PutApi, socks: list[socket.socket]) -> None:
    """Serve each connection in a thread of its own; never returns (the threads end the
    process when the mount closes the connections)."""
    for sock in socks:
        threading.Thread(target=_serve_connection, args=(api, sock), daemon=True).start()
    threading.Event().wait()


def _serve_connection(api: PutApi, sock: socket.socket) -> None:
    """Answer the requests of one connection, one at a time, until it closes."""
    head = bytearray(_REQUEST.size)
    block = bytearray(BLOCK_SIZE)  # reused: a fresh 512 KiB per request costs page faults
    while True:
        try:
            _recv_exact(sock, memoryview(head))
            args_length, data_length = _REQUEST.unpack(head)
            if args_length > _MAX_JSON or data_length > _MAX_DATA:
                raise ValueError("oversized request")
            raw = bytearray(args_length)
            _recv_exact(sock, memoryview(raw))
            if len(block) != data_length:
                block = bytearray(data_length) if data_length else block
            data = memoryview(block)[:data_length]
            _recv_exact(sock, data)
            request = json.loads(raw)
        except (OSError, EOFError, ValueError):
            # The mount closed its connections (unmount) or is gone: puts still under way on
            # other connections are abandoned; their blocks stay in the mount's spool.
            os._exit(0)
        answer = _answer(api, request, data, block)
        body = json.dumps(answer).encode()
        try:
            _send_parts(sock, [_ANSWER.pack(len(body)), body])
        except OSError:
            os._exit(0)


def _answer(api: PutApi, request: Any, data: memoryview, block: bytearray) -> dict[str, Any]:
    try:
        args = request["args"]
        if request["op"] == "spooled":
            snapshot_id, index, path, offset, skip = args
            if len(block) < BLOCK_SIZE:
                block = bytearray(BLOCK_SIZE)
            digest = put_file_block(api, snapshot_id, index, path, offset, bool(skip), block)
            return {"ok": None if digest is None else base64.b64encode(digest).decode()}
        snapshot_id, index, checksum_b64 = args
        api.put_block(str(snapshot_id), int(index), data, str(checksum_b64))
        return {"ok": None}
    except EbsfsError as exc:
        return {"error": _encode_error(exc)}
    except Exception as exc:  # any failure goes back as an answer
        return {"error": _encode_error(BackendUnavailableError(f"PutSnapshotBlock: {exc!r}"))}


def main(argv: Sequence[str]) -> int:
    """Entry point of the child: ``python -m ebsfs.write.upload FD[,FD...]``."""
    fds = argv[0].split(",") if len(argv) == 1 else []
    if not fds or not all(fd.isdigit() for fd in fds):
        print("ebsfs.write.upload is started by ebsfs mount, not by hand", file=sys.stderr)
        return 2
    _ignore_stop_signals()
    socks = [socket.socket(fileno=int(fd)) for fd in fds]
    try:
        code = _serve(socks)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        print(f"ebsfs upload process: {exc}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    # Connection threads may still wait on the network: do not join them.
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
