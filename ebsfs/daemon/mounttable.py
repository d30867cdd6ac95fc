"""What the commands may trust about a mount: the mount table, its daemon, what holds it.

Read from /proc and /sys only, never through the mount (a hung daemon cannot block it),
except :func:`bounded_getxattr`, which gives up after a bound. See docs/operations.md.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from ebsfs.core.errors import MountError, UsageError

FSTYPE = "fuse.ebsfs"
FUSE_DEVICE = "/dev/fuse"
#: How long a command waits for a mount to answer one attribute read.
XATTR_TIMEOUT = 15.0


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    parent_id: int
    device: str
    mountpoint: str
    fstype: str
    source: str
    super_options: str

    def super_option(self, name: str) -> str | None:
        """The value of ``name=...`` among the superblock options, if set."""
        for option in self.super_options.split(","):
            key, sep, value = option.partition("=")
            if sep and key == name:
                return value
        return None


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in octal (\040, \011, \012, \134).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field) >= i + 4 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a mountinfo text, in order (a later entry is mounted over an earlier)."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=fields[2],
                    mountpoint=_unescape(fields[4]),
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                    super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
                )
            )
        except (ValueError, IndexError):
            continue  # not a line this parser knows: skip rather than guess
    return entries


def mount_table() -> list[MountEntry]:
    """This process's mount table."""
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def canonical(path: str) -> str:
    """``path`` absolute with its parent's symlinks resolved, without touching ``path`` itself
    (a stat of a mount point would ask its daemon, which may hang)."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def top_mount(path: str, table: list[MountEntry] | None = None) -> MountEntry | None:
    """The mount visible at exactly ``path`` (the last one mounted there), if any."""
    table = mount_table() if table is None else table
    found = None
    for entry in table:
        if entry.mountpoint == path:
            found = entry
    return found


def ebsfs_mount(path: str, unmounted: str = "is not mounted") -> tuple[str, MountEntry]:
    """The canonical mount point and its entry; MountError unless ``path`` is exactly the
    mount point of a ``fuse.ebsfs`` mount (``unmounted`` says what nothing mounted means)."""
    if not path:
        raise UsageError("MOUNTPOINT must not be empty")
    try:
        mountpoint = canonical(path)
        table = mount_table()
        entry = top_mount(mountpoint, table)
        if entry is None and os.path.realpath(path) != mountpoint:
            mountpoint = os.path.realpath(path)
            entry = top_mount(mountpoint, table)
    except OSError as exc:
        raise MountError(f"{path}: {exc.strerror}") from None
    if entry is None:
        if not os.path.lexists(mountpoint):
            raise MountError(f"{mountpoint} does not exist")
        raise MountError(f"{mountpoint} {unmounted}")
    if entry.fstype != FSTYPE:
        raise MountError(f"{mountpoint} is not an ebsfs mount (it is {entry.fstype})")
    return mountpoint, entry


def bounded_getxattr(path: str, name: str, timeout: float = XATTR_TIMEOUT) -> bytes:
    """``os.getxattr`` that raises TimeoutError after ``timeout`` seconds (a hung daemon
    would keep the call waiting forever; the thread left behind dies with the process)."""
    result: list[bytes] = []
    error: list[BaseException] = []

    def call() -> None:
        try:
            result.append(os.getxattr(path, name))
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    worker = threading.Thread(target=call, name="getxattr", daemon=True)
    worker.start()
    worker.join(timeout)
    if error:
        raise error[0]
    if not result:
        raise TimeoutError(f"{path} did not answer within {timeout:.0f}s")
    return result[0]


def printable(text: str) -> str:
    """``text`` with control characters escaped: names that come from other processes or
    from a mount must not drive the terminal they are printed on."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def is_ebsfs_daemon(pid: int) -> bool:
    """Whether ``pid`` runs the ebsfs command and holds /dev/fuse open."""
    cmdline = _read(f"/proc/{pid}/cmdline")
    if not cmdline:
        return False
    argv = cmdline.rstrip("\0").split("\0")
    named = any(os.path.basename(arg) == "ebsfs" for arg in argv) or any(
        argv[i] == "-m" and argv[i + 1] == "ebsfs" for i in range(len(argv) - 1)
    )
    if not named:
        return False
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == FUSE_DEVICE:
                    return True
    return False


def process_uid(pid: int) -> int | None:
    """The real uid of ``pid``."""
    status = _read(f"/proc/{pid}/status") or ""
    for line in status.splitlines():
        if line.startswith("Uid:"):
            with contextlib.suppress(ValueError, IndexError):
                return int(line.split()[1])
    return None


def same_mount(a: MountEntry, b: MountEntry) -> bool:
    """Whether two lines of the mount table are one mount: its id alone is not enough, the
    kernel gives a freed id to the next mount made anywhere."""
    return a.mount_id == b.mount_id and a.device == b.device and a.mountpoint == b.mountpoint


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent does not)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def daemon_pid(mountpoint: str, entry: MountEntry, raw: bytes) -> int:
    """The pid in the root's ``user.ebsfs.pid`` once it is checked to be this mount's daemon;
    MountError otherwise (the attribute is only as trustworthy as whoever serves it)."""
    try:
        pid = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise MountError(f"{mountpoint}: its daemon pid {raw[:20]!r} is not a number") from None
    if pid <= 1 or pid == os.getpid():
        raise MountError(f"{mountpoint}: refusing to signal pid {pid}, not an ebsfs daemon")
    if not is_ebsfs_daemon(pid):
        raise MountError(
            f"{mountpoint}: pid {pid} is not an ebsfs mount daemon; not signalling it"
        )
    owner = entry.super_option("user_id")
    uid = process_uid(pid)
    if owner is not None and uid is not None and str(uid) != owner:
        raise MountError(
            f"{mountpoint}: pid {pid} runs as uid {uid}, the mount belongs to uid {owner}; "
            "not signalling it"
        )
    return pid


def _under(path: str, mountpoint: str) -> bool:
    path = path.removesuffix(" (deleted)")
    return path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")


def _process_name(pid: str) -> str:
    return printable((_read(f"/proc/{pid}/comm") or "?").strip())


def _loop_holders(mountpoint: str, table: list[MountEntry]) -> Iterable[str]:
    for backing in sorted(glob.glob("/sys/block/loop*/loop/backing_file")):
        target = (_read(backing) or "").strip()
        if not target or not _under(target, mountpoint):
            continue
        device = "/dev/" + backing.split("/")[3]
        where = [e.mountpoint for e in table if e.source == device]
        mounted = f", mounted at {', '.join(where)}" if where else ""
        yield printable(f"loop device {device} (backing file {target}{mounted})")


def _fdinfo_mnt_id(path: str) -> int | None:
    for line in (_read(path) or "").splitlines():
        if line.startswith("mnt_id:"):
            with contextlib.suppress(ValueError):
                return int(line.split()[1])
    return None


def _link_mnt_id(path: str) -> int | None:
    """The mount id of what the /proc link ``path`` points at (an O_PATH open: the mount's
    daemon is not asked anything)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _fdinfo_mnt_id(f"/proc/self/fdinfo/{fd}")
    finally:
        os.close(fd)


def fstype_of(path: str) -> str | None:
    """The file system type of the mount ``path`` (symlinks followed) is on, from the mount
    table (None: no such path, or its mount is not in this process's table)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        mount_id = _fdinfo_mnt_id(f"/proc/self/fdinfo/{fd}")
    finally:
        os.close(fd)
    return next((e.fstype for e in mount_table() if e.mount_id == mount_id), None)


def _device(text: str, base: int) -> tuple[int, int] | None:
    major, _, minor = text.partition(":")
    try:
        return int(major, base), int(minor, base)
    except ValueError:
        return None


def _maps_path(field: str) -> str:
    """A path of /proc/PID/maps as it is named: the kernel writes a newline in it as the four
    characters ``\\012`` (and nothing else escaped, so the raw field is tried too)."""
    return field.replace("\\012", "\n")


def _process_holders(entry: MountEntry, exclude: set[int]) -> Iterable[str]:
    # A path under the mount point is only a candidate: the directory under the mount (a
    # shell that was in it before the mount) has the same name. The mount id, or the
    # device of a mapping, says which.
    mountpoint = entry.mountpoint
    device = _device(entry.device, 10)
    own_ns = _link("/proc/self/ns/mnt")
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        if int(pid) in exclude or _link(f"/proc/{pid}/ns/mnt") != own_ns:
            continue
        uses = []
        for what in ("cwd", "root", "exe"):
            target = _link(f"/proc/{pid}/{what}")
            if (
                target
                and _under(target, mountpoint)
                and _link_mnt_id(f"/proc/{pid}/{what}") == entry.mount_id
            ):
                uses.append(what)
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        if any(
            _under(_link(f"/proc/{pid}/fd/{fd}") or "", mountpoint)
            and _fdinfo_mnt_id(f"/proc/{pid}/fdinfo/{fd}") == entry.mount_id
            for fd in fds
        ):
            uses.append("open file")
        maps = _read(f"/proc/{pid}/maps") or ""
        mapped = (line.split(maxsplit=5) for line in maps.splitlines())
        if any(
            len(parts) == 6
            and (_under(parts[5], mountpoint) or _under(_maps_path(parts[5]), mountpoint))
            and _device(parts[3], 16) == device
            for parts in mapped
        ):
            uses.append("mapped file")
        if uses:
            yield f"{_process_name(pid)} (pid {pid}: {', '.join(uses)})"


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def holders(mountpoint: str, entry: MountEntry, exclude: set[int]) -> list[str]:
    """What keeps ``mountpoint`` busy: mounts inside it, loop devices backed by its files,
    processes with a file, directory or mapping in it (those in ``exclude`` aside)."""
    table = mount_table()
    found = [
        printable(f"a mount at {e.mountpoint}")
        for e in table
        if e.parent_id == entry.mount_id and e.mount_id != entry.mount_id
    ]
    found += list(_loop_holders(mountpoint, table))
    found += list(_process_holders(entry, exclude))
    return found
