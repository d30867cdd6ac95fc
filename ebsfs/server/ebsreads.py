"""The EBS direct APIs that read a completed snapshot: ListSnapshotBlocks, ListChangedBlocks
and GetSnapshotBlock (with its fast path), each block verified before it is served
(docs/server.md); mixed into ebs.EbsService."""

import base64
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.server import tokens
from ebsfs.server.errors import EbsError, not_found, validation
from ebsfs.server.storage import COMPLETED, Snapshot, Store
from ebsfs.server.validate import SNAPSHOT_ID_PATTERN, TOKEN_PATTERN, Checks, plain_int, to_int
from ebsfs.server.wire import ACCOUNT_ID, Request, Response, json_response

if TYPE_CHECKING:
    from ebsfs.server.ebs import Timing

log = logging.getLogger(__name__)

DEFAULT_MAX_RESULTS = 100

_SNAPSHOT_ID_RE = re.compile(SNAPSHOT_ID_PATTERN)
_TOKEN_RE = re.compile(TOKEN_PATTERN)
_BLOCK_SIZE_TEXT = str(BLOCK_SIZE)


def archived(snapshot_id: str) -> EbsError:
    """The answer to a read of an archived snapshot. AWS documents that it cannot be read
    but not the error; this one is our choice (docs/server.md)."""
    return validation(
        "INVALID_SNAPSHOT_ID",
        f"The snapshot '{snapshot_id}' is in the archive storage tier; restore it with "
        "RestoreSnapshotTier to read it.",
    )


class SnapshotReads:
    """Handlers of the reads; the subclass sets these attributes."""

    store: Store
    timing: "Timing"
    mint: tokens.TokenMint

    def state(self, snap: Snapshot) -> tuple[str, str]:
        return snap.state(time.time(), self.timing.minute)

    def _lagging(self, snap: Snapshot) -> bool:
        """Whether ``snap`` completed less than ``read_lag`` ago: AWS's direct reads still
        answer 404 SNAPSHOT_NOT_FOUND for a while after EC2 says completed."""
        if self.timing.read_lag <= 0:
            return False
        done = snap.completion_time()
        return done is not None and time.time() < done + self.timing.read_lag

    def _readable(self, snapshot_id: str, account: str = ACCOUNT_ID) -> Snapshot:
        """A completed snapshot ``account`` may read; anything else reads as 404, as on
        AWS, bar an archived one (docs/server.md: its answer is our choice)."""
        snap = self.store.get(snapshot_id)
        if snap is None or not snap.may_read(account) or self.state(snap)[0] != COMPLETED:
            raise not_found(snapshot_id)
        if self._lagging(snap):
            raise not_found(snapshot_id)
        if snap.storage_tier(time.time()) == "archive":
            raise archived(snapshot_id)
        return snap

    # -- ListSnapshotBlocks ---------------------------------------------------------------------

    def _page_args(self, req: Request) -> tuple[int, int, str | None, Checks]:
        q = req.query()
        max_results = to_int(q.get("maxResults"), "maxResults")
        start = to_int(q.get("startingBlockIndex"), "startingBlockIndex")
        token = q.get("pageToken")
        c = Checks()
        c.between(max_results, "maxResults", 100, 10000)
        c.at_least(start, "startingBlockIndex", 0)
        c.length(token, "nextToken", 0, 256)
        c.pattern(token, "nextToken", TOKEN_PATTERN)
        return (
            DEFAULT_MAX_RESULTS if max_results is None else max_results,
            0 if start is None else start,
            token,
            c,
        )

    def _cursor(self, token: str | None, kind: str, binding: str, start: int) -> int:
        if token is None:
            return start
        value = self.mint.verify(token, kind, binding)
        if value is None:
            raise validation("INVALID_PAGE_TOKEN", f"The pagination token {token} is invalid.")
        return value

    def op_ListSnapshotBlocks(self, req: Request, snapshot_id: str) -> Response:
        max_results, start, token, c = self._page_args(req)
        c.snapshot_id(snapshot_id, "snapshotId")
        c.done()
        snap = self._readable(snapshot_id, req.account)
        cursor = self._cursor(token, tokens.PAGE_BLOCKS, snapshot_id, start)
        rows = self.store.view(snap, cursor, max_results + 1) if cursor < snap.block_count else []
        now = time.time()
        expiry = now + self.timing.block_token_ttl
        blocks = [
            {
                "BlockIndex": i,
                "BlockToken": self.mint.mint(tokens.BLOCK, f"{snapshot_id}:{i}", i, expiry),
            }
            for i, _, _ in rows[:max_results]
        ]
        next_token = None
        if len(rows) > max_results:
            next_token = self.mint.mint(
                tokens.PAGE_BLOCKS,
                snapshot_id,
                rows[max_results][0],
                now + self.timing.page_token_ttl,
            )
        body = {
            "BlockSize": BLOCK_SIZE,
            "Blocks": blocks,
            # An empty answer carries no tokens; AWS then reports the request time.
            "ExpiryTime": round(expiry if blocks else now, 3),
            "NextToken": next_token,
            "VolumeSize": snap.volume_size,
        }
        return json_response(200, body, req.request_id)

    # -- ListChangedBlocks ----------------------------------------------------------------------

    def op_ListChangedBlocks(self, req: Request, second_id: str) -> Response:
        max_results, start, token, c = self._page_args(req)
        first_id = req.query().get("firstSnapshotId")
        c.snapshot_id(first_id, "firstSnapshotId")
        c.snapshot_id(second_id, "secondSnapshotId")
        c.done()
        if not first_id:
            raise validation("INVALID_SNAPSHOT_ID", "First snapshot should not be empty or null")
        first = self._readable(first_id, req.account)
        second = self._readable(second_id, req.account)
        if first.root_id != second.root_id:
            raise validation(
                "UNRELATED_SNAPSHOTS",
                f"The snapshots {first_id} and {second_id} are not from the same lineage.",
            )
        binding = f"{first_id}:{second_id}"
        cursor = self._cursor(token, tokens.PAGE_CHANGED, binding, start)
        a = {i: o for i, o, _ in self.store.view(first, cursor, max_results + 1)}
        b = {i: o for i, o, _ in self.store.view(second, cursor, max_results + 1)}
        candidates = sorted(set(a) | set(b))
        now = time.time()
        expiry = now + self.timing.block_token_ttl
        changed: list[dict[str, Any]] = []
        for i in candidates[:max_results]:
            if a.get(i) == b.get(i):
                continue
            entry: dict[str, Any] = {"BlockIndex": i}
            if i in a:
                entry["FirstBlockToken"] = self.mint.mint(
                    tokens.BLOCK, f"{first_id}:{i}", i, expiry
                )
            if i in b:
                entry["SecondBlockToken"] = self.mint.mint(
                    tokens.BLOCK, f"{second_id}:{i}", i, expiry
                )
            changed.append(entry)
        next_token = None
        if len(candidates) > max_results:
            next_token = self.mint.mint(
                tokens.PAGE_CHANGED,
                binding,
                candidates[max_results],
                now + self.timing.page_token_ttl,
            )
        if not changed and next_token is None:
            # AWS's terminal empty page carries nothing but the empty list.
            body: dict[str, Any] = {
                "BlockSize": None,
                "ChangedBlocks": [],
                "ExpiryTime": None,
                "LastEvaluatedBlockIndex": None,
                "NextToken": None,
                "VolumeSize": None,
            }
        else:
            body = {
                "BlockSize": BLOCK_SIZE,
                "ChangedBlocks": changed,
                "ExpiryTime": round(expiry, 3),
                "LastEvaluatedBlockIndex": None,
                "NextToken": next_token,
                "VolumeSize": second.volume_size,
            }
        return json_response(200, body, req.request_id)

    # -- GetSnapshotBlock -----------------------------------------------------------------------

    def get_fast(self, req: Request, snapshot_id: str, raw_index: str) -> Response | None:
        """GetSnapshotBlock when everything about it is in order, as ``put_fast``."""
        query = req.raw_query
        if not query.startswith("blockToken=") or "&" in query:
            return None
        token = unquote(query[11:].replace("+", " "))
        index = plain_int(raw_index)
        if (
            index is None
            or len(token) > 256
            or not _TOKEN_RE.fullmatch(token)
            or len(snapshot_id) > 64
            or not _SNAPSHOT_ID_RE.fullmatch(snapshot_id)
        ):
            return None
        snap = self.store.get(snapshot_id)
        if snap is None or self.state(snap)[0] != COMPLETED or self._lagging(snap):
            return None
        if not snap.may_read(req.account) or snap.archived:
            return None  # the general path refuses it, or checks a temporary restore
        if self.mint.verify(token, tokens.BLOCK, f"{snapshot_id}:{index}") != index:
            return None
        found = self.store.lookup(snap, index)
        if found is None:
            return None
        digest, path, offset = found
        if path is None or _damage(path, offset, digest) is not None:
            return None  # the general path logs and answers it
        return self._block_response(req, digest, path, offset)

    def _block_response(self, req: Request, digest: bytes, path: Path, offset: int) -> Response:
        return Response(
            200,
            [
                ("Content-Type", "application/octet-stream"),
                ("x-amzn-RequestId", req.request_id),
                ("x-amz-Data-Length", _BLOCK_SIZE_TEXT),
                ("x-amz-Checksum", base64.b64encode(digest).decode()),
                ("x-amz-Checksum-Algorithm", "SHA256"),
            ],
            file=path,
            file_offset=offset,
            file_length=BLOCK_SIZE,
        )

    def op_GetSnapshotBlock(self, req: Request, snapshot_id: str, raw_index: str) -> Response:
        index = to_int(raw_index, "blockIndex")
        token = req.query().get("blockToken")
        c = Checks()
        c.snapshot_id(snapshot_id, "snapshotId")
        if c.required(index, "blockIndex"):
            c.at_least(index, "blockIndex", 0)
        if c.required(token, "blockToken"):
            c.length(token, "blockToken", 0, 256)
            c.pattern(token, "blockToken", TOKEN_PATTERN)
        c.done()
        assert token is not None
        snap = self._readable(snapshot_id, req.account)
        found = None
        if self.mint.verify(token, tokens.BLOCK, f"{snapshot_id}:{index}") == index:
            assert index is not None
            found = self.store.lookup(snap, index)
        if found is None:
            raise validation("INVALID_BLOCK_TOKEN", f"The block token {token} is invalid.")
        digest, path, offset = found
        why = "no stored data" if path is None else _damage(path, offset, digest)
        if path is None or why is not None:
            log.error("GetSnapshotBlock %s block %d: %s (segment %s, offset %d, checksum %s); "
                      "answering 500", snapshot_id, index, why, path, offset,
                      base64.b64encode(digest).decode())
            raise EbsError(500, "InternalServerException", "Block data unavailable.")
        return self._block_response(req, digest, path, offset)


def _damage(path: Path, offset: int, digest: bytes) -> str | None:
    """What is wrong with the stored block at ``offset`` of ``path``, None if it is whole.

    The block is read and hashed on every GetSnapshotBlock (a 512 KiB SHA256: a fraction of
    a millisecond), so damage on disk is never served with the checksum of what was put.
    The read leaves the block in the page cache, where the answer's sendfile finds it; the
    block cannot change in between: a completed snapshot's contents are immutable and
    freed only once no snapshot refers to them.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "its segment file is missing"
    except OSError as exc:
        return f"its segment file cannot be opened ({exc.strerror})"
    try:
        data = os.pread(fd, BLOCK_SIZE, offset)
    except OSError as exc:
        return f"reading it failed ({exc.strerror})"
    finally:
        os.close(fd)
    if len(data) < BLOCK_SIZE:
        return f"its segment ends {len(data)} bytes into it"
    if hashlib.sha256(data).digest() != digest:
        return "its data does not match its checksum"
    return None
