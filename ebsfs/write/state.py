"""A draft's manifest and states (docs/usage.md "Writing", docs/architecture.md, the write
path): the ``Manifest`` kept in the spool's ``manifest.json`` and the moves between states."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field, fields
from typing import Any

log = logging.getLogger(__name__)

GIB = 1 << 30


class DraftState(enum.StrEnum):
    """``user.ebsfs.state``; the same strings are in the manifest."""

    DRAFT = "draft"
    PENDING = "pending"
    SEALING = "sealing"
    COMPLETED = "completed"
    ERROR = "error"


#: Every move a draft may make (``Manifest.move`` logs any other as a bug)::
#:
#:   draft ──started──▶ pending ──seal──▶ sealing ──▶ completed (leaves new/)
#:     └──seal (no snapshot started)────────▲   ├──▶ error (AWS failed it)
#:                       pending ◀──────────────┘ (failed, the snapshot still pending)
#:   error ──seal again──▶ pending, or draft (a new snapshot will be started)
TRANSITIONS: dict[DraftState, frozenset[DraftState]] = {
    DraftState.DRAFT: frozenset({DraftState.PENDING, DraftState.SEALING}),
    DraftState.PENDING: frozenset({DraftState.SEALING}),
    DraftState.SEALING: frozenset({DraftState.COMPLETED, DraftState.ERROR, DraftState.PENDING}),
    DraftState.ERROR: frozenset({DraftState.PENDING, DraftState.DRAFT}),
    DraftState.COMPLETED: frozenset(),
}
#: The states in which the file takes writes, sizes and (before the first write) attributes.
WRITABLE = frozenset({DraftState.DRAFT, DraftState.PENDING})


def gib_ceil(size: int) -> int:
    return -(-size // GIB) * GIB


@dataclass
class Manifest:
    """What a spool's ``manifest.json`` says of its draft. Written as the same JSON as ever:
    optional keys only when they are set, and keys this version does not know kept."""

    name: str
    state: DraftState = DraftState.DRAFT
    #: Declared or fixed size in bytes (a whole number of GiB); None: taken from the data.
    size: int | None = None
    mtime_ns: int = 0
    version: int = 1
    #: Set before the first byte is kept: from then on attributes are fixed.
    written: bool = False
    #: The scratch overlay a keep is writing into it; no snapshot is started until it is done.
    kept_from: str = ""
    client_token: str = ""
    parent: str = ""
    parent_gib: int = 0
    parent_encrypted: bool = False
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    #: Encryption asked for (``user.ebsfs.encrypted``), and the key.
    encrypt: bool = False
    kms_key_arn: str = ""
    snapshot_id: str = ""
    started_at: float = 0.0
    #: What StartSnapshot answered; None: not started, or started by a version that did not
    #: record it (see ``SnapshotDraft``).
    encrypted: bool | None = None
    state_message: str = ""
    #: AWS failed the snapshot: sealing again starts a new one.
    aws_error: bool = False
    #: CompleteSnapshot answered (``complete_called``: sent, as written by earlier versions).
    complete_accepted: bool = False
    complete_called: bool = False
    #: Keys of a later version, written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict)

    _ALWAYS = ("version", "name", "state", "size", "mtime_ns")

    def move(self, to: DraftState) -> None:
        """Change the state. A move ``TRANSITIONS`` does not allow is a bug: logged (the
        mount must not fail for it), and made, as the code asked."""
        if to != self.state and to not in TRANSITIONS[self.state]:
            log.error("%s: a move from %s to %s is not a transition (a bug)",
                      self.name, self.state, to)
        self.state = to

    @property
    def writable(self) -> bool:
        return self.state in WRITABLE

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in self._ALWAYS or value not in (None, False, "", 0, 0.0, {}):
                out[f.name] = str(value) if f.name == "state" else value
        if self.encrypted is not None:
            out["encrypted"] = self.encrypted
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Manifest:
        """The manifest of ``raw`` (KeyError, ValueError or TypeError if it is not one)."""
        if not isinstance(raw, dict):
            raise TypeError("a manifest is a JSON object")
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        m = cls(name=_typed(raw["name"], str, "name"))
        for key, value in raw.items():
            if key not in known:
                m.extra[key] = value
            elif key != "name" and value is not None:
                setattr(m, key, _FIELD_TYPES[key](value, key))
        return m


def _typed(value: Any, kind: type, key: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"manifest: {key} is {value!r}")
    return value


def _tags(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"manifest: {key} is {value!r}")
    return dict(value)


_FIELD_TYPES: dict[str, Any] = {
    "state": lambda v, k: DraftState(v),
    "size": lambda v, k: _typed(v, int, k),
    "mtime_ns": lambda v, k: _typed(v, int, k),
    "version": lambda v, k: _typed(v, int, k),
    "written": lambda v, k: bool(v),
    "kept_from": lambda v, k: _typed(v, str, k),
    "client_token": lambda v, k: _typed(v, str, k),
    "parent": lambda v, k: _typed(v, str, k),
    "parent_gib": lambda v, k: _typed(v, int, k),
    "parent_encrypted": lambda v, k: bool(v),
    "description": lambda v, k: _typed(v, str, k),
    "tags": _tags,
    "encrypt": lambda v, k: bool(v),
    "kms_key_arn": lambda v, k: _typed(v, str, k),
    "snapshot_id": lambda v, k: _typed(v, str, k),
    "started_at": lambda v, k: _typed(v, float, k),
    "encrypted": lambda v, k: bool(v),
    "state_message": lambda v, k: _typed(v, str, k),
    "aws_error": lambda v, k: bool(v),
    "complete_accepted": lambda v, k: bool(v),
    "complete_called": lambda v, k: bool(v),
}
