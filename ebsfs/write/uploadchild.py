"""The upload process itself: ``python -m ebsfs.write.upload`` (or a fork of the mount) serving
PutSnapshotBlock on its connections, one thread each (docs/architecture.md, the write path)."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import BackendUnavailableError, EbsfsError
from ebsfs.options.config import AwsConfig
from ebsfs.write.spooled import PutBlock, put_file_block
from ebsfs.write.wire import (
    ANSWER,
    MAX_DATA,
    MAX_JSON,
    REQUEST,
    WireError,
    recv_exact,
    recv_json,
    send_frame,
    send_parts,
)


def serve(socks: list[socket.socket]) -> int:
    from ebsfs.aws.api import Api  # boto3 is imported here, in the child only

    first = socks[0]
    settings = recv_json(first)
    logging.basicConfig(
        level=str(settings.get("log_level", "WARNING")).upper(),
        format="ebsfs upload process: %(levelname)s %(name)s: %(message)s",
    )
    try:
        api = Api(AwsConfig(**settings["aws"]))
    except EbsfsError as exc:
        send_frame(first, {"error": WireError.of(exc).to_json()})
        return 1
    send_frame(first, {"ready": True})
    serve_connections(api, socks)
    return 0


def leave_the_mount(keep: list[int]) -> None:
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
    ignore_stop_signals()


def ignore_stop_signals() -> None:
    # A service stop signals every process of the unit at once; the mount then still has to
    # store what is dirty through this process, and closes its connections when done.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def serve_connections(api: PutBlock, socks: list[socket.socket]) -> None:
    """Serve each connection in a thread of its own; never returns (the threads end the
    process when the mount closes the connections)."""
    for sock in socks:
        threading.Thread(target=_serve_connection, args=(api, sock), daemon=True).start()
    threading.Event().wait()


def _serve_connection(api: PutBlock, sock: socket.socket) -> None:
    """Answer the requests of one connection, one at a time, until it closes."""
    head = bytearray(REQUEST.size)
    block = bytearray(BLOCK_SIZE)  # reused: a fresh 512 KiB per request costs page faults
    while True:
        try:
            recv_exact(sock, memoryview(head))
            args_length, data_length = REQUEST.unpack(head)
            if args_length > MAX_JSON or data_length > MAX_DATA:
                raise ValueError("oversized request")
            raw = bytearray(args_length)
            recv_exact(sock, memoryview(raw))
            if len(block) != data_length:
                block = bytearray(data_length) if data_length else block
            data = memoryview(block)[:data_length]
            recv_exact(sock, data)
            request = json.loads(raw)
        except (OSError, EOFError, ValueError):
            # The mount closed its connections (unmount) or is gone: puts still under way on
            # other connections are abandoned; their blocks stay in the mount's spool.
            os._exit(0)
        answer = _answer(api, request, data, block)
        body = json.dumps(answer).encode()
        try:
            send_parts(sock, [ANSWER.pack(len(body)), body])
        except OSError:
            os._exit(0)


def _answer(api: PutBlock, request: Any, data: memoryview, block: bytearray) -> dict[str, Any]:
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
        return {"error": WireError.of(exc).to_json()}
    except Exception as exc:  # any failure goes back as an answer
        failure = BackendUnavailableError(f"PutSnapshotBlock: {exc!r}")
        return {"error": WireError.of(failure).to_json()}


def main(argv: Sequence[str]) -> int:
    """Entry point of the child: ``python -m ebsfs.write.upload FD[,FD...]``."""
    fds = argv[0].split(",") if len(argv) == 1 else []
    if not fds or not all(fd.isdigit() for fd in fds):
        print("ebsfs.write.upload is started by ebsfs mount, not by hand", file=sys.stderr)
        return 2
    ignore_stop_signals()
    socks = [socket.socket(fileno=int(fd)) for fd in fds]
    try:
        code = serve(socks)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        print(f"ebsfs upload process: {exc}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    # Connection threads may still wait on the network: do not join them.
    os._exit(code)

