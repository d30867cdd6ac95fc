"""A draft's ``user.ebsfs.*`` attributes: shown from its manifest, and the rules for the
ones that shape StartSnapshot before the first write (docs/usage.md "Writing")."""

from __future__ import annotations

import re

from ebsfs.core.blocks import SNAPSHOT_ID_RE, XATTR_PREFIX
from ebsfs.core.errors import InvalidValueError, NotPermittedError
from ebsfs.write.state import GIB, DraftState, Manifest

_SETTABLE = ("parent", "description", "encrypted", "kms_key_arn")
_MAX_TAGS = 50
_KMS_ARN = re.compile(r"^arn:aws[\w-]*:kms:[^:]*:\d*:\S+$")


def shown(m: Manifest, *, progress: str, dirty_blocks: int, stored_blocks: int
          ) -> dict[str, bytes]:
    """Every attribute of the draft, as ``getxattr`` shows it."""
    out: dict[str, str] = {"state": str(m.state)}
    if m.snapshot_id:
        out["snapshot_id"] = m.snapshot_id
    if m.size is not None:
        out["volume_size"] = str(m.size // GIB)
    if m.description:
        out["description"] = m.description
    if m.parent:
        out["parent"] = m.parent
    if m.encrypted is not None or m.encrypt:
        encrypted = m.encrypt if m.encrypted is None else m.encrypted
        out["encrypted"] = "true" if encrypted else "false"
    if m.kms_key_arn:
        out["kms_key_arn"] = m.kms_key_arn
    if m.state_message:
        out["state_message"] = m.state_message
    if m.state == DraftState.SEALING and progress:
        out["progress"] = progress
    out["dirty_blocks"] = str(dirty_blocks)
    out["stored_blocks"] = str(stored_blocks)
    for key, value in {"Name": m.name, **m.tags}.items():
        out[f"tag.{key}"] = value
    return {XATTR_PREFIX + k: v.encode() for k, v in out.items()}


def settable(m: Manifest, name: str, value: bytes) -> tuple[str, str]:
    """(key, text) of an attribute that may be set now; NotPermittedError or
    InvalidValueError otherwise."""
    if not name.startswith(XATTR_PREFIX):
        raise NotPermittedError(f"{m.name}: only user.ebsfs.* attributes can be set")
    key = name[len(XATTR_PREFIX) :]
    if key not in _SETTABLE and not key.startswith("tag."):
        raise NotPermittedError(f"{m.name}: {name} cannot be set")
    if m.state != DraftState.DRAFT or m.written:
        raise NotPermittedError(f"{m.name}: {name} can only be set before the first write")
    try:
        return key, value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidValueError(f"{name}: not UTF-8 text") from None


def parent_id(text: str) -> str:
    parent = text.strip()
    if not SNAPSHOT_ID_RE.match(parent):
        raise InvalidValueError(f"user.ebsfs.parent: {parent!r} is not a snapshot id")
    return parent


def set_parent(m: Manifest, parent: str, gib: int, encrypted: bool) -> None:
    if m.encrypt and not encrypted:
        raise InvalidValueError(
            f"user.ebsfs.parent: {parent} is not encrypted, and {m.name} is to be")
    m.parent, m.parent_gib, m.parent_encrypted = parent, gib, encrypted
    if m.size is None or m.size < gib * GIB:
        m.size = gib * GIB


def set_other(m: Manifest, key: str, text: str) -> None:
    """Any settable attribute but the parent."""
    if key == "encrypted":
        _set_encrypted(m, text.strip().lower())
    elif key == "kms_key_arn":
        arn = text.strip()
        if not _KMS_ARN.match(arn) or len(arn) > 2048:
            raise InvalidValueError(f"user.ebsfs.kms_key_arn: {arn!r} is not a KMS key ARN")
        _check_encryption(m, True)
        m.kms_key_arn = arn
        m.encrypt = True
    elif key == "description":
        if not text or len(text) > 255:
            raise InvalidValueError("user.ebsfs.description: 1 to 255 characters")
        m.description = text
    else:
        _set_tag(m, key[len("tag.") :], text)


def _set_tag(m: Manifest, key: str, value: str) -> None:
    tags = dict(m.tags)
    if not key or len(key) > 127 or key.lower().startswith("aws:"):
        raise InvalidValueError(f"tag {key!r}: keys have 1 to 127 characters, not 'aws:...'")
    if key == "Name":
        raise InvalidValueError("the Name tag is the file's name: rename the file instead")
    if len(value) > 255:
        raise InvalidValueError(f"tag {key}: values have at most 255 characters")
    tags[key] = value
    if len(tags) + 1 > _MAX_TAGS:
        raise InvalidValueError(f"at most {_MAX_TAGS} tags, Name included")
    m.tags = tags


def _set_encrypted(m: Manifest, text: str) -> None:
    if text in ("1", "true", "yes"):
        wanted = True
    elif text in ("0", "false", "no"):
        wanted = False
    else:
        raise InvalidValueError(f"user.ebsfs.encrypted: {text!r} is not 1/true or 0/false")
    _check_encryption(m, wanted)
    m.encrypt = wanted
    if not wanted:
        m.kms_key_arn = ""


def _check_encryption(m: Manifest, wanted: bool) -> None:
    """A child takes its parent's encryption (AWS refuses Encrypted with a parent)."""
    if m.parent and wanted != m.parent_encrypted:
        state = "encrypted" if m.parent_encrypted else "not encrypted"
        raise InvalidValueError(
            f"{m.name}: its parent {m.parent} is {state}; a child snapshot "
            "takes its parent's encryption")
