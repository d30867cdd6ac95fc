"""The request and response records passed between the HTTP layer and the handlers."""

import itertools
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ebsfs.server.errors import EbsError, Ec2Error

#: The account the main key pair signs for (a second one: ``--second-account``).
ACCOUNT_ID = "000000000000"


@dataclass
class Request:
    """One parsed HTTP request; header names are lower-case."""

    method: str
    raw_path: str
    raw_query: str
    headers: dict[str, str]
    #: A block-sized PUT body is a view of the connection's receive buffer, valid until
    #: the response was sent.
    body: bytes | memoryview = b""
    body_complete: bool = True
    request_id: str = field(default_factory=lambda: _request_id())
    operation: str = "-"
    #: Set once the SigV4 signature was checked from the head alone (the payload hash was a
    #: header): only the body's hash is left to compare.
    signature_checked: bool = False
    #: The account whose key signed the request (set by the SigV4 check; app.py).
    account: str = ACCOUNT_ID
    #: Set once the call was counted against the rate limits (by the fast path, so that
    #: the general path taking it over does not count it twice).
    rate_counted: bool = False

    @property
    def path(self) -> str:
        return unquote(self.raw_path)

    def query(self) -> dict[str, str]:
        """Query parameters, decoded; the last of repeated names wins."""
        out: dict[str, str] = {}
        for item in self.raw_query.split("&"):
            if item:
                k, _, v = item.partition("=")
                out[unquote(k.replace("+", " "))] = unquote(v.replace("+", " "))
        return out


# Request ids: a random version 4 UUID per process whose last 48 bits count requests. A
# request id must be unique, not unpredictable; formatting a fresh UUID cost more than
# routing the request.
_ID_PREFIX = str(uuid.UUID(int=random.getrandbits(128), version=4))[:24]
_ID_COUNTER = itertools.count(random.getrandbits(40))


def _request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


@dataclass
class Response:
    """What to send back: a body in memory, or ``file_length`` bytes of ``file`` from
    ``file_offset`` on (sent with sendfile)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file: Path | None = None
    file_offset: int = 0
    file_length: int = 0
    #: Set by the drop fault: close the connection before the response is complete.
    drop: bool = False
    #: Close the connection once the response is sent (AWS does after a throttling answer).
    close: bool = False

    def file_bytes(self) -> bytes:
        """The part of ``file`` this response sends."""
        assert self.file is not None
        with open(self.file, "rb") as f:
            f.seek(self.file_offset)
            return f.read(self.file_length)


def json_response(status: int, doc: dict[str, Any], request_id: str) -> Response:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Response(
        status,
        [("Content-Type", "application/json"), ("x-amzn-RequestId", request_id)],
        body,
    )


def ebs_error_response(err: EbsError, request_id: str) -> Response:
    resp = json_response(err.status, err.body(), request_id)
    resp.headers.append(("x-amzn-ErrorType", err.error_type()))
    return resp


#: Characters XML 1.0 cannot carry, escaped or not: controls other than tab, newline and
#: carriage return, lone surrogates (which cannot even be encoded), U+FFFE and U+FFFF.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
XML_INVALID_TEXT = "a control character, a lone surrogate, U+FFFE or U+FFFF"


def xml_unsafe(text: str | None) -> bool:
    """Whether ``text`` holds a character EC2's XML answers could not carry."""
    return text is not None and _XML_INVALID.search(text) is not None


def xml_escape(text: str) -> str:
    """``text`` for XML; a character XML cannot carry at all (stored by an older server,
    or echoed from a request in an error) is shown as U+FFFD, so that the answer parses."""
    text = _XML_INVALID.sub("\ufffd", text)
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def ec2_error_response(err: Ec2Error, request_id: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{xml_escape(err.code)}</Code><Message>{xml_escape(err.message)}</Message>"
        f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
    ).encode()
    return Response(err.status, [("Content-Type", "text/xml;charset=UTF-8")], body)
