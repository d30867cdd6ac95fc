"""PutSnapshotBlock in a child process, so that block uploads do not share the mount's GIL.

Writing through a mount is bound by Python on both of its sides: the trio thread answers
every FUSE request and writes the spool, and up to ``--max-concurrency`` worker threads run
botocore for each 512 KiB PutSnapshotBlock. In one process they share one GIL, and every
``write()`` of the user's ``dd`` waits until the trio thread wins it back from the upload
threads. :class:`PutProcess` is a drop-in for ``Api.put_block`` that hands each block over a
Unix socket to a child (``python -m ebsfs.putproc``) running the same ``Api.put_block`` in
its own threads, under its own GIL; the mount's worker thread only waits for the answer.

The contract is ``Api.put_block``'s: the call returns once AWS acknowledged the block, or
raises the ``ebsfs.errors`` exception ``Api`` raised in the child (class, message, code,
reason and status carried over), so the write layer's retries see exactly what they would
see in-process. The child:

* starts at the first put (a mount that only reads never starts one), inherits the mount's
  environment (credentials resolve as they do for the mount; nothing secret is passed on its
  command line) and its AWS settings (endpoints, region, profile, timeouts, attempts);
* exits when its socket reaches end of file: the mount closed it (unmount), or the mount
  died, even by ``kill -9``, and the kernel closed it. (Not ``PR_SET_PDEATHSIG``: it fires
  when the *thread* that started the child ends, and trio retires idle worker threads.)
  Nothing else holds the mount's end: later children are started with ``close_fds``;
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
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, Protocol

from ebsfs import checksum, errors
from ebsfs.config import AwsConfig
from ebsfs.errors import BackendUnavailableError, EbsfsError
from ebsfs.types import BLOCK_SIZE, ZERO_BLOCK

log = logging.getLogger(__name__)

__all__ = ["PutProcess"]

#: Request frame: id, length of the JSON arguments, length of the block.
_REQUEST = struct.Struct("!QII")
#: Answer frame (and the start-up frames, with id 0): id, length of the JSON result.
_ANSWER = struct.Struct("!QI")
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


class PutApi(Protocol):
    """What this module needs of ``ebsfs.api.Api`` (and offers in its place)."""

    def put_block(
        self, snapshot_id: str, index: int, data: bytes | memoryview, checksum_b64: str
    ) -> None: ...


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
        self.command = list(command or (sys.executable, "-m", "ebsfs.putproc"))
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
                link = _Link.start(self.command, self._settings())
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


class _Waiter:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: EbsfsError | None = None
        self.result: Any = None


class _Link:
    """One child process and the socket to it: requests go out under a lock from the calling
    threads, answers come back on a reader thread that wakes the caller."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.dead = False
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Waiter] = {}
        self._next_id = 0
        self._reader = threading.Thread(target=self._read_answers, name="put-answers", daemon=True)

    @classmethod
    def start(cls, command: Sequence[str], settings: dict[str, Any]) -> _Link:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (ours, theirs):
            # Room for a few blocks: a 512 KiB send completes at once instead of waking the
            # reader for every piece of it.
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        try:
            proc = subprocess.Popen(
                [*command, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches the mount, which then closes
                # the socket, rather than killing uploads under it.
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            theirs.close()
            raise
        theirs.close()
        link = cls(proc, ours)
        try:
            ours.settimeout(START_TIMEOUT)
            _send_frame(ours, 0, settings)
            _, answer = _recv_json(ours)
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                raise _decode_error(answer["error"])
            if not isinstance(answer, dict) or answer.get("ready") is not True:
                raise BackendUnavailableError("the upload process did not start")
            ours.settimeout(None)
        except (OSError, EbsfsError, ValueError) as exc:
            link._kill()
            if isinstance(exc, EbsfsError):
                raise
            raise BackendUnavailableError(f"the upload process did not start: {exc}") from exc
        link._reader.start()
        return link

    def call(self, request: dict[str, Any], data: bytes | memoryview, timeout: float) -> Any:
        """Send ``request`` (and ``data``); the child's result, or its error raised."""
        waiter = _Waiter()
        with self._lock:
            if self.dead:
                raise BackendUnavailableError("PutSnapshotBlock: the upload process has exited")
            self._next_id += 1
            request_id = self._next_id
            self._pending[request_id] = waiter
        body = json.dumps(request).encode()
        view = memoryview(data).cast("B")
        try:
            with self._send_lock:
                head = _REQUEST.pack(request_id, len(body), len(view))
                _send_parts(self.sock, [head, body, view])
        except OSError as exc:
            self._fail(f"cannot be reached ({exc})")
        if not waiter.done.wait(timeout):
            self._fail(f"did not answer within {timeout:.0f} s")
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def close(self) -> None:
        with self._lock:
            self.dead = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
        self.sock.close()
        self._fail_pending("was stopped")

    def _read_answers(self) -> None:
        while True:
            try:
                request_id, answer = _recv_json(self.sock)
            except (OSError, ValueError, EOFError) as exc:
                if not self.dead:
                    self._fail(f"exited ({exc or 'connection closed'})")
                return
            with self._lock:
                waiter = self._pending.pop(request_id, None)
            if waiter is None:
                continue  # a call that gave up waiting
            if isinstance(answer, dict) and "error" in answer:
                waiter.error = _decode_error(answer["error"])
            elif isinstance(answer, dict):
                waiter.result = answer.get("ok")
            else:
                waiter.error = BackendUnavailableError("PutSnapshotBlock: a garbled answer")
            waiter.done.set()

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
            self._kill()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        self._fail_pending(why)

    def _fail_pending(self, why: str) -> None:
        with self._lock:
            waiting, self._pending = self._pending, {}
        for waiter in waiting.values():
            waiter.error = BackendUnavailableError(f"PutSnapshotBlock: the upload process {why}")
            waiter.done.set()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.error("upload process %d does not exit after SIGKILL", self.proc.pid)


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


def _send_frame(sock: socket.socket, frame_id: int, value: Any) -> None:
    body = json.dumps(value).encode()
    _send_parts(sock, [_ANSWER.pack(frame_id, len(body)), body])


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError("connection closed")
        got += n


def _recv_json(sock: socket.socket) -> tuple[int, Any]:
    head = bytearray(_ANSWER.size)
    _recv_exact(sock, memoryview(head))
    frame_id, length = _ANSWER.unpack(head)
    if length > _MAX_JSON:
        raise ValueError(f"a frame of {length} bytes")
    body = bytearray(length)
    _recv_exact(sock, memoryview(body))
    return frame_id, json.loads(body)


def _encode_error(exc: EbsfsError) -> dict[str, Any]:
    attrs = {
        k: v for k, v in vars(exc).items() if isinstance(v, str | int | float | bool) or v is None
    }
    return {"type": type(exc).__name__, "message": str(exc), "attrs": attrs}


def _decode_error(answer: dict[str, Any]) -> EbsfsError:
    """The exception the child raised, rebuilt: only ``ebsfs.errors`` classes are made."""
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


class _Buffers:
    """Reused 512 KiB receive buffers: a fresh one per block would cost its page faults."""

    def __init__(self) -> None:
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) == size:
                    return self._free.pop(i)
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            if buf and len(self._free) < 256:
                self._free.append(buf)


def _serve(sock: socket.socket) -> int:
    from ebsfs.api import Api  # boto3 is imported here, in the child only

    _, settings = _recv_json(sock)
    logging.basicConfig(
        level=str(settings.get("log_level", "WARNING")).upper(),
        format="ebsfs upload process: %(levelname)s %(name)s: %(message)s",
    )
    try:
        api = Api(AwsConfig(**settings["aws"]))
    except EbsfsError as exc:
        _send_frame(sock, 0, {"error": _encode_error(exc)})
        return 1
    _send_frame(sock, 0, {"ready": True})
    send_lock = threading.Lock()
    buffers = _Buffers()
    pool = ThreadPoolExecutor(int(settings.get("threads", 32)), thread_name_prefix="put")

    def one(request_id: int, request: dict[str, Any], block: bytearray) -> None:
        answer: dict[str, Any]
        try:
            args = request["args"]
            if request["op"] == "spooled":
                snapshot_id, index, path, offset, skip = args
                block = buffers.take(BLOCK_SIZE)
                digest = put_file_block(api, snapshot_id, index, path, offset, bool(skip), block)
                answer = {"ok": None if digest is None else base64.b64encode(digest).decode()}
            else:
                snapshot_id, index, checksum_b64 = args
                api.put_block(str(snapshot_id), int(index), memoryview(block), str(checksum_b64))
                answer = {"ok": None}
        except EbsfsError as exc:
            answer = {"error": _encode_error(exc)}
        except Exception as exc:  # any failure goes back as an answer
            error = BackendUnavailableError(f"PutSnapshotBlock: {exc!r}")
            answer = {"error": _encode_error(error)}
        finally:
            buffers.give(block)
        body = json.dumps(answer).encode()
        with send_lock:
            _send_parts(sock, [_ANSWER.pack(request_id, len(body)), body])

    head = bytearray(_REQUEST.size)
    while True:
        try:
            _recv_exact(sock, memoryview(head))
            request_id, args_length, data_length = _REQUEST.unpack(head)
            if args_length > _MAX_JSON or data_length > _MAX_DATA:
                raise ValueError("oversized request")
            args = bytearray(args_length)
            _recv_exact(sock, memoryview(args))
            block = buffers.take(data_length)
            _recv_exact(sock, memoryview(block))
        except (OSError, EOFError, ValueError):
            # The mount closed the socket (unmount) or is gone: puts still under way are
            # abandoned; their blocks stay in the mount's spool.
            return 0
        pool.submit(one, request_id, json.loads(args), block)


def main(argv: Sequence[str]) -> int:
    """Entry point of the child: ``python -m ebsfs.putproc FD``."""
    if len(argv) != 1 or not argv[0].isdigit():
        print("ebsfs.putproc is started by ebsfs mount, not by hand", file=sys.stderr)
        return 2
    fd = int(argv[0])
    # A service stop signals every process of the unit at once; the mount then still has to
    # store what is dirty through this process, and closes its socket when done.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    try:
        code = _serve(sock)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        print(f"ebsfs upload process: {exc}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    # Worker threads may still wait on the network: do not join them.
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
