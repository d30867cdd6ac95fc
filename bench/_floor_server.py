"""The floor for bench/server.py: the least a Python HTTP server can do per PutSnapshotBlock.

It receives the request head and the block, checks the block's SHA256 against the
``x-amz-Checksum`` header, writes it with a plain buffered ``pwrite`` into a file it reuses
round and round (no sync, no index, no record header), and answers as ebsfs's server does.
No SigV4 check, no validation of anything else, no durability beyond the page cache: each
of those is work the real server must do and this one leaves out, so its CPU per request is
a lower bound for any Python server on the machine, not a design to copy.

``--contract`` adds the two things SPEC.md requires of every put that the above leaves out:
the SigV4 check (ebsfs's own ``Verifier``, key pair ``floor``/``floor``) and a durable write
(``O_DIRECT`` with ``RWF_DSYNC``, appended: a store keeps every block it acknowledged, so
new data needs new space). Validation, routing, record headers and the index are still left
out.

Run as ``python -m bench._floor_server [--contract] DATA_FILE``; it prints its port, then
serves until killed. Only PUTs of one block are answered (201); anything else gets a 400.
"""

import base64
import hashlib
import mmap
import os
import socket
import sys
import threading

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server.sigv4 import AuthFailure, Verifier

#: Blocks are written round a file of this size, so that a run needs little disk (not with
#: ``--contract``, which appends).
RING = 128 * BLOCK_SIZE


_REFUSED = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _serve(
    conn: socket.socket, fd: int, next_offset: list[int], lock: threading.Lock,
    verifier: Verifier | None, sync_flag: int, ring: int,
) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = bytearray(65536)
    head_view = memoryview(head)
    block = memoryview(mmap.mmap(-1, BLOCK_SIZE))
    end = 0
    while True:
        cut = head.find(b"\r\n\r\n", 0, end)
        while cut < 0:
            n = conn.recv_into(head_view[end:], 4096)
            if not n:
                return
            end += n
            cut = head.find(b"\r\n\r\n", 0, end)
        lines = bytes(head[:cut]).decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        method, target, _ = lines[0].split(" ", 2)
        if method != "PUT" or headers.get("content-length") != str(BLOCK_SIZE):
            conn.sendall(_REFUSED)
            return
        if verifier is not None:
            path, _, query = target.partition("?")
            try:
                verifier.verify(method, path, query, headers, lambda: "", "ebs")
            except AuthFailure:
                conn.sendall(_REFUSED)
                return
        got = end - cut - 4
        block[:got] = head[cut + 4:end]
        while got < BLOCK_SIZE:
            n = conn.recv_into(block[got:], BLOCK_SIZE - got)
            if not n:
                return
            got += n
        end = 0
        checksum = base64.b64encode(hashlib.sha256(block).digest()).decode()
        if checksum != headers.get("x-amz-checksum"):
            conn.sendall(_REFUSED)
            return
        with lock:
            offset = next_offset[0]
            next_offset[0] = (offset + BLOCK_SIZE) % ring
        os.pwritev(fd, [block], offset, sync_flag)
        conn.sendall(
            (
                "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                "x-amzn-RequestId: 00000000-0000-4000-8000-000000000000\r\n"
                f"x-amz-Checksum: {checksum}\r\nx-amz-Checksum-Algorithm: SHA256\r\n\r\n{{}}"
            ).encode()
        )


def main(args: list[str]) -> None:
    contract = args[0] == "--contract"
    data_file = args[-1]
    direct = os.O_DIRECT if contract else 0
    fd = os.open(data_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct, 0o600)
    verifier = Verifier("floor", "floor") if contract else None
    sync_flag = os.RWF_DSYNC if contract else 0
    ring = 1 << 62 if contract else RING
    listener = socket.socket()
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        listener.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)
    next_offset, lock = [0], threading.Lock()
    while True:
        conn, _ = listener.accept()
        state = (conn, fd, next_offset, lock, verifier, sync_flag, ring)
        threading.Thread(target=_serve, args=state, daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
