"""The HTTP transport on its own, over a real socket pair: a block body and the SHA256 it
hashes while receiving it."""

import hashlib
import itertools
import os
import socket
import threading
import time

import pytest

from ebsfs.server.httpd import Handler
from ebsfs.types import BLOCK_SIZE


def _pair() -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
    return server, client


def _handler(sock: socket.socket) -> Handler:
    handler = Handler.__new__(Handler)  # no server loop: only the receiving side
    handler.request = sock
    handler.setup()
    return handler


@pytest.mark.parametrize("cuts", [
    [BLOCK_SIZE],  # all at once, with the head
    [100, 4096, BLOCK_SIZE],
    [100_000, 262_144, 262_145, 400_001, BLOCK_SIZE],
])
def test_a_block_body_is_hashed_exactly_however_it_arrives(cuts: list[int]) -> None:
    block = os.urandom(BLOCK_SIZE)
    head = f"PUT /snapshots/snap-1/blocks/0 HTTP/1.1\r\nContent-Length: {BLOCK_SIZE}\r\n\r\n"
    server, client = _pair()

    def send() -> None:
        client.sendall(head.encode() + block[: cuts[0]])
        for start, end in itertools.pairwise(cuts):
            time.sleep(0.05)
            client.sendall(block[start:end])

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        handler = _handler(server)
        parsed = handler._read_head()
        assert parsed is not None
        body, complete, digest = handler._read_body(parsed[0], parsed[3])
        sender.join(10)
        assert complete and bytes(body) == block
        assert digest == hashlib.sha256(block).digest()
    finally:
        server.close()
        client.close()
        sender.join(10)


def test_a_short_block_body_has_no_digest() -> None:
    block = os.urandom(BLOCK_SIZE)
    head = f"PUT /snapshots/snap-1/blocks/0 HTTP/1.1\r\nContent-Length: {BLOCK_SIZE}\r\n\r\n"
    server, client = _pair()
    try:
        client.sendall(head.encode() + block[:300_000])
        client.shutdown(socket.SHUT_WR)
        handler = _handler(server)
        parsed = handler._read_head()
        assert parsed is not None
        body, complete, digest = handler._read_body(parsed[0], parsed[3])
        assert not complete and bytes(body) == block[:300_000] and digest is None
        assert handler.close_connection
    finally:
        server.close()
        client.close()
