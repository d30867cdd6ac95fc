"""Chaos: nothing lost, nothing hung, no wrong byte, while everything around the mount fails.

For ``--duration`` seconds, writers put known bytes into new snapshots through a real mount
and seal them, and readers read known completed snapshots through it, while a controller, in
turn:

``server-kill``   kills the local server with SIGKILL and starts it again on the same data
                  directory and port after a short outage;
``mount-kill``    kills the mount daemon with SIGKILL, detaches the dead mount and mounts
                  again with the same spool directory;
``spool-full``    fills the spool's file system (a small ext4 on a loop device) with a filler
                  file, holds it full, then deletes the filler;
``faults``        restarts the server with ``--error-rate``, ``--drop-rate``,
                  ``--throttle-rate`` and ``--corrupt-rate``, then again without them.

Writers: ``truncate -s 1G new/NAME``, then segments of deterministic bytes (seeded per
snapshot, unaligned to blocks), each one ``dd ... conv=notrunc,fsync``. A segment whose ``dd``
exited 0 was acknowledged: it is never written again, so a crash that lost it shows. A failed
``dd`` (EIO in an outage, ENOSPC, a dead mount) is retried, as an operator would. Then
``ebsfs complete``, retried after faults; a snapshot sealed by an attempt that did not live
to say so is found by its Name tag.

At the end, with the faults off, every sealed snapshot is read back twice, with plain boto3
and through a fresh read-only mount, and compared with what was written; drafts left unsealed
are read through ``new/``. Readers' reads during the run are compared as they happen (an
error such as EIO or ENOTCONN in an outage is allowed and counted; a wrong byte never).

    python -m bench.chaos --duration 120        (make chaos CHAOS_ARGS="--duration 120")

Exit status: 0 when no byte was lost or wrong and nothing hung; 1 otherwise; 2 when the run
could not be set up. Everything runs on 127.0.0.1 and is torn down on the way out, Ctrl-C
included (mounts, server, loop device); ``--keep`` keeps the work directory and its logs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.mounting import MountProc, drop_page_cache, lazy_unmount
from tests.serverproc import LocalServer, free_port, get_block, list_blocks, upload_image

#: ``python -m bench`` (``make bench``) leaves it out: it is ``make chaos``.
DEFAULT_RUN = False
MIB = 1 << 20
BLOCK = 524288
VOLUME = 1 << 30
CHUNK = 64 << 10
#: Every subprocess and wait is bounded: an operation past this is a hang, not slowness.
HANG = 180.0
FAULT_FLAGS = (
    "--error-rate", "0.05", "--drop-rate", "0.03", "--throttle-rate", "0.05",
    "--corrupt-rate", "0.05",
)  # fmt: skip
KINDS = ("server-kill", "mount-kill", "spool-full", "faults")


def content(seed: int, offset: int, length: int) -> bytes:
    """The bytes a snapshot of ``seed`` holds at ``[offset, offset+length)`` of its data."""
    out = bytearray()
    first, last = offset // CHUNK, (offset + length - 1) // CHUNK
    for chunk in range(first, last + 1):
        out += random.Random(seed * 1_000_003 + chunk).randbytes(CHUNK)
    lo = offset - first * CHUNK
    return bytes(out[lo : lo + length])


@dataclass
class Snap:
    """What was written into one snapshot: data ``[start, end)`` of its volume, from ``seed``."""

    name: str
    seed: int
    start: int
    end: int
    #: Acknowledged (``dd`` with fsync exited 0) byte ranges of the volume.
    acked: list[tuple[int, int]] = field(default_factory=list)
    snapshot_id: str | None = None
    lost_draft: bool = False

    def expected(self, offset: int, length: int) -> bytes:
        """The volume's bytes at ``[offset, offset+length)``: the data, zeros around it."""
        out = bytearray(length)
        lo, hi = max(offset, self.start), min(offset + length, self.end)
        if lo < hi:
            out[lo - offset : hi - offset] = content(self.seed, lo - self.start, hi - lo)
        return bytes(out)


class Stats:
    """Counters shared by every thread (Counter updates under one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.read_errors: Counter[str] = Counter()
        self.write_errors: Counter[str] = Counter()
        self.wrong: list[str] = []
        self.lost: list[str] = []
        self.hung: list[str] = []
        #: Failures of the bench itself (a thread that died): the run proves nothing.
        self.broken: list[str] = []
        self.bytes_read = 0
        self.bytes_written = 0
        self.bytes_checked = 0
        self.bytes_lost = 0
        self.bytes_wrong = 0

    def add(self, counter: str, key: str, n: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[key] += n

    def note(self, kind: str, text: str) -> None:
        with self.lock:
            getattr(self, kind).append(text)
        print(f"chaos: {kind.upper()}: {text}", flush=True)


def _run(cmd: list[str], stats: Stats, what: str, *, stdin: bytes | None = None,
         env: dict[str, str] | None = None, timeout: float = HANG) -> tuple[int, str, str]:
    """Run ``cmd``; a run past ``timeout`` is killed and noted as hung (rc -1)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is not None else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stats.note("hung", f"{what}: {' '.join(cmd[:4])}... still running after {timeout:.0f}s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)  # a process in D state on a dead mount may stay
        return -1, "", "hung"
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _errno_name(text: str) -> str:
    for name in ("Input/output error", "No space left", "Transport endpoint", "No such file",
                 "Read-only", "Permission denied", "Operation not permitted", "File too large",
                 "Software caused connection abort", "Stale"):
        if name in text:
            return name
    return text.strip().splitlines()[-1][:60] if text.strip() else "unknown"


def _present(path: Path) -> bool:
    """Whether ``path`` exists; True when that cannot be told (a dead mount: ENOTCONN)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


class SpoolDisk:
    """A small ext4 on a loop device for the spool, and the filler that fills it."""

    def __init__(self, work: Path, mib: int) -> None:
        self.image = work / "spool.img"
        self.path = work / "spoolfs"
        self.mib = mib
        self.loop: str | None = None
        self.filler = self.path / "filler"

    def setup(self) -> None:
        with open(self.image, "wb") as f:
            f.truncate(self.mib * MIB)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)], check=True)
        self.loop = subprocess.run(["losetup", "--find", "--show", str(self.image)], check=True,
                                   capture_output=True, text=True).stdout.strip()
        self.path.mkdir(exist_ok=True)
        subprocess.run(["mount", self.loop, str(self.path)], check=True)

    def fill(self) -> int:
        """Fill the file system to the last byte; returns the filler's size."""
        st = os.statvfs(self.path)
        size = st.f_bavail * st.f_frsize
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while size > 0:
                try:
                    os.posix_fallocate(fd, 0, size)
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    size -= MIB
            # What fallocate could not take, a byte at a time in 4 KiB writes.
            os.lseek(fd, 0, os.SEEK_END)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(4096))
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def teardown(self) -> None:
        self.free()
        if (
            os.path.ismount(self.path)
            and subprocess.run(["umount", str(self.path)], capture_output=True).returncode
        ):
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
            self.loop = None


class Chaos:
    """One run: the parts, the threads, and the final check."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(tempfile.mkdtemp(prefix="ebsfs-chaos-", dir=args.workdir))
        self.stats = Stats()
        self.server = LocalServer(self.work / "server", "--log-level", "info", port=free_port())
        self.disk = SpoolDisk(self.work, args.spool_mib)
        self.mount: MountProc | None = None
        self.mount_flags = ("--io-timeout", "10", "--cache-size", "64MiB",
                            "--writeback-delay", "0.2", "--refresh", "2", "--log-level", "info")
        self.mount_up = threading.Event()
        self.stop = threading.Event()  # faults stop, writers finish their snapshot
        self.halt = threading.Event()  # everything stops now (Ctrl-C)
        self.readable: list[Snap] = []  # completed snapshots readers may read
        self.snaps: list[Snap] = []
        self.lock = threading.Lock()
        self.mount_lock = threading.Lock()

    # ---- the parts -------------------------------------------------------------------------

    @property
    def mnt(self) -> Path:
        return self.work / "mnt"

    def start_mount(self) -> None:
        self.mount = MountProc(self.server, self.mnt, *self.mount_flags,
                               spool_dir=self.disk.path / "spool")
        self.mount.log_path = self.work / "mount.log"
        deadline = time.monotonic() + HANG
        while True:
            try:
                self.mount.start()
                break
            except AssertionError as exc:
                # The spool's disk may be full, or the server down: an operator retries.
                if time.monotonic() > deadline or self.halt.is_set():
                    raise
                self.stats.add("ops", "mount retries")
                print(f"chaos: mount failed, retrying: {str(exc).splitlines()[0]}", flush=True)
                time.sleep(1)
        self.mount_up.set()

    def kill_mount(self) -> None:
        self.mount_up.clear()
        if self.mount is not None:
            self.mount.kill()

    def setup(self) -> None:
        self.disk.setup()
        self.server.start()
        ebs, ec2 = self.server.ebs(max_attempts=5), self.server.ec2(max_attempts=5)
        for n in range(self.args.base):
            # Data at an unaligned offset, holes before and after.
            start = n * 3 * MIB + 12345
            snap = Snap(f"base-{n}", self.rng.randrange(1 << 30), start, start + 5 * MIB + 777)
            image = snap.expected(0, -(-snap.end // BLOCK) * BLOCK)
            snap.snapshot_id = upload_image(ebs, ec2, image, 1, name=snap.name)
            snap.acked = [(snap.start, snap.end)]
            self.readable.append(snap)
        self.start_mount()

    # ---- writers ---------------------------------------------------------------------------

    def wait_mount(self) -> bool:
        """Wait until the mount is up; False if the run is halting."""
        while not self.mount_up.wait(0.5):
            if self.halt.is_set():
                return False
        return not self.halt.is_set()

    def writer(self, wid: int) -> None:
        n = 0
        while not self.stop.is_set() and not self.halt.is_set():
            rng = random.Random(f"{self.args.seed}:{wid}:{n}")
            start = rng.randrange(0, 32 * MIB // CHUNK) * CHUNK + rng.choice([0, CHUNK // 2])
            length = rng.randrange(2 * MIB, self.args.snap_mib * MIB)
            snap = Snap(f"chaos-{wid}-{n}", rng.randrange(1 << 30), start, start + length)
            with self.lock:
                self.snaps.append(snap)
            self.write_snapshot(snap, rng)
            n += 1

    def draft_gone(self, snap: Snap, path: Path) -> bool:
        """After a failure: True if the draft left new/ while acknowledged data was in it."""
        if not snap.acked or _present(path) or not self.mount_up.is_set():
            return False
        time.sleep(1)  # a remount may be under way
        if _present(path) or not self.mount_up.is_set():
            return False
        # It may have left new/ because it completed, with nobody told (the endpoint failed
        # just after): AWS has the last word, once it answers.
        found = self.find_sealed(snap, patience=60)
        if found:
            snap.snapshot_id = found
            return False
        snap.lost_draft = True
        self.stats.note("lost", f"{snap.name}: the draft is gone from new/ after "
                        f"{sum(e - s for s, e in snap.acked)} bytes were acknowledged")
        return True

    def write_snapshot(self, snap: Snap, rng: random.Random) -> None:
        path = self.mnt / "new" / snap.name
        env = self.server.env()
        # Pre-size: flow A.
        while self.wait_mount():
            rc, _, err = _run(["truncate", "-s", str(VOLUME), str(path)], self.stats,
                              f"{snap.name} truncate")
            if rc == 0:
                break
            self.stats.add("write_errors", f"truncate: {_errno_name(err)}")
            time.sleep(0.5)
        pos = snap.start
        while pos < snap.end:
            seg = min(snap.end - pos, rng.randrange(1, 24) * CHUNK)
            if pos % CHUNK:
                seg = min(snap.end - pos, CHUNK - pos % CHUNK)
            data = content(snap.seed, pos - snap.start, seg)
            while True:
                if not self.wait_mount():
                    return
                # bs=CHUNK/2 keeps seek= exact for every offset written (all are its multiples,
                # but for the final tail, which dd writes as a short last block).
                bs = CHUNK // 2
                rc, _, err = _run(
                    ["dd", f"of={path}", f"bs={bs}", f"seek={pos // bs}", "iflag=fullblock",
                     "conv=notrunc,fsync", "status=none"],
                    self.stats, f"{snap.name} dd", stdin=data,
                )
                if rc == 0:
                    snap.acked.append((pos, pos + seg))
                    self.stats.add("ops", "dd segments acknowledged")
                    with self.stats.lock:
                        self.stats.bytes_written += seg
                    break
                self.stats.add("ops", "dd segments failed (retried)")
                self.stats.add("write_errors", f"dd: {_errno_name(err)}")
                if self.draft_gone(snap, path):
                    return
                time.sleep(0.5)
            pos += seg
            time.sleep(self.args.pause)
        self.seal(snap, path, env)

    def find_sealed(self, snap: Snap, patience: float = 0.0) -> str | None:
        """The id of a completed snapshot named ``snap.name`` (a seal nobody heard of);
        asks again for ``patience`` seconds while the server does not answer."""
        deadline = time.monotonic() + patience
        while True:
            try:
                ec2 = self.server.ec2(max_attempts=3)
                found = ec2.describe_snapshots(
                    OwnerIds=["self"], Filters=[{"Name": "tag:Name", "Values": [snap.name]}]
                )["Snapshots"]
            except Exception:  # the server is down right now
                if time.monotonic() > deadline or self.halt.is_set():
                    return None
                time.sleep(1)
                continue
            done = [s["SnapshotId"] for s in found if s["State"] == "completed"]
            return str(done[0]) if done else None

    def seal(self, snap: Snap, path: Path, env: dict[str, str]) -> None:
        began = time.monotonic()
        deadline = began + self.args.seal_timeout
        while time.monotonic() < deadline:
            if not self.wait_mount():
                return
            rc, out, err = _run([sys.executable, "-m", "ebsfs", "complete", "--timeout", "60",
                                 str(path)], self.stats, f"{snap.name} complete", env=env)
            if rc == 0 and out.strip():
                snap.snapshot_id = out.strip().splitlines()[-1]
                break
            self.stats.add("ops", "seals retried")
            self.stats.add("write_errors", f"complete rc={rc}: {_errno_name(err)}")
            if self.draft_gone(snap, path):
                return
            if snap.snapshot_id is not None:  # it had completed: found by its Name tag
                self.stats.add("ops", "seals found by Name tag")
                break
            time.sleep(1)
        if snap.snapshot_id is None:
            if not self.halt.is_set():
                # Not lost (the draft stays under new/ and is checked there at the end), but
                # a seal that cannot finish is a hang for whoever waits on it.
                self.stats.note("hung", f"{snap.name}: not sealed after "
                                f"{time.monotonic() - began:.0f}s of `ebsfs complete` retries")
            return
        self.stats.add("ops", "snapshots sealed")
        with self.lock:
            self.readable.append(snap)

    # ---- readers ---------------------------------------------------------------------------

    def reader(self, rid: int) -> None:
        rng = random.Random(f"{self.args.seed}:reader:{rid}")
        while not self.stop.is_set() and not self.halt.is_set():
            if not self.mount_up.wait(0.5):
                continue
            with self.lock:
                snap = rng.choice(self.readable)
            # Mostly in the data, sometimes across its edges and the holes around it.
            lo = max(0, snap.start - BLOCK)
            offset = rng.randrange(lo, snap.end + BLOCK)
            length = rng.choice([4096, 65536, BLOCK, 2 * BLOCK + 4321, rng.randrange(1, MIB)])
            path = self.mnt / str(snap.snapshot_id)
            began = time.monotonic()
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    if rng.random() < 0.5:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    got = os.pread(fd, length, offset)
                finally:
                    os.close(fd)
            except OSError as exc:
                self.stats.add("read_errors", errno.errorcode.get(exc.errno or 0, str(exc)))
                self.stats.add("ops", "reads failed")
                time.sleep(0.2)
                continue
            finally:
                if time.monotonic() - began > HANG:
                    self.stats.note("hung", f"read of {snap.name} took "
                                    f"{time.monotonic() - began:.0f}s")
            want = snap.expected(offset, length)
            self.stats.add("ops", "reads")
            with self.stats.lock:
                self.stats.bytes_read += len(got)
            if got != want:
                bad = sum(1 for a, b in zip(got, want, strict=False) if a != b)
                bad += abs(len(want) - len(got))
                with self.stats.lock:
                    self.stats.bytes_wrong += bad
                self.stats.note("wrong", f"read of {snap.name} ({snap.snapshot_id}) at "
                                f"{offset}+{length}: {bad} bytes differ")

    def guarded(self, target: Any, n: int) -> None:
        """Run a writer or reader; an exception of the bench itself voids the run."""
        try:
            target(n)
        except Exception as exc:
            traceback.print_exc()
            self.stats.note("broken", f"{target.__name__} {n} stopped: {exc!r}")

    # ---- the controller --------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        outage = self.args.outage
        print(f"chaos: {time.strftime('%H:%M:%S')} {kind}", flush=True)
        if kind == "server-kill":
            self.server.kill()
            self.halt.wait(outage)
            self.server.start()
        elif kind == "mount-kill":
            with self.mount_lock:
                self.kill_mount()
                self.halt.wait(outage / 2)
                self.start_mount()
        elif kind == "spool-full":
            size = self.disk.fill()
            print(f"chaos: spool disk full (filler {size // MIB} MiB)", flush=True)
            self.halt.wait(outage * 2)
            self.disk.free()
        elif kind == "faults":
            self.server.kill()
            self.server.flags = ("--log-level", "info", *FAULT_FLAGS)
            self.server.start()
            self.halt.wait(outage * 3)
            self.server.kill()
            self.server.flags = ("--log-level", "info")
            self.server.start()
        self.stats.add("faults", kind)

    def controller(self, end: float) -> None:
        events = [KINDS[i % len(KINDS)] for i in range(self.args.events or 10**6)]
        gap = self.args.gap
        for kind in events:
            if self.halt.wait(gap) or time.monotonic() > end:
                break
            self.inject(kind)

    # ---- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        end = time.monotonic() + self.args.duration
        threads = [threading.Thread(target=self.guarded, args=(self.writer, i), daemon=True)
                   for i in range(self.args.writers)]
        threads += [threading.Thread(target=self.guarded, args=(self.reader, i), daemon=True)
                    for i in range(self.args.readers)]
        for t in threads:
            t.start()
        try:
            self.controller(end)
            while time.monotonic() < end and not self.halt.is_set():
                time.sleep(0.5)
        finally:
            self.stop.set()
        print("chaos: faults off; writers finish and seal their snapshots", flush=True)
        for t in threads:
            t.join(timeout=12 * HANG)
            if t.is_alive():
                self.stats.note("hung", f"{t.name} did not finish")
        self.verify()
        return self.report()

    # ---- the check -------------------------------------------------------------------------

    def compare(self, snap: Snap, offset: int, got: bytes, how: str) -> None:
        """Account ``got`` (read at ``offset``) against what was written and acknowledged."""
        want = snap.expected(offset, len(got))
        with self.stats.lock:
            self.stats.bytes_checked += len(got)
        if got == want:
            return
        lost = wrong = 0
        acked = [(max(s, offset), min(e, offset + len(got))) for s, e in snap.acked]
        acked = [(s, e) for s, e in acked if s < e]
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            if a != b:
                pos = offset + i
                if any(s <= pos < e for s, e in acked):
                    lost += 1
                else:
                    wrong += 1
        with self.stats.lock:
            self.stats.bytes_lost += lost
            self.stats.bytes_wrong += wrong
        self.stats.note("lost" if lost else "wrong",
                        f"{snap.name} ({snap.snapshot_id}) via {how}: {lost} acknowledged bytes "
                        f"differ, {wrong} other bytes differ, in {offset}+{len(got)}")

    def verify(self) -> None:
        if self.halt.is_set():
            return
        lo_blocks = {s.name: (s.start // BLOCK, (s.end - 1) // BLOCK) for s in self.snaps}
        sealed = [s for s in self.snaps if s.snapshot_id]
        unsealed = [s for s in self.snaps if not s.snapshot_id and not s.lost_draft]
        for snap in self.snaps:
            if snap.lost_draft:
                n = sum(e - s for s, e in snap.acked)
                with self.stats.lock:
                    self.stats.bytes_lost += n
        # 1. boto3, straight from the server.
        ebs = self.server.ebs(max_attempts=5)
        for snap in sealed:
            tokens, _ = list_blocks(ebs, str(snap.snapshot_id))
            first, last = lo_blocks[snap.name]
            for index in sorted(set(tokens) | set(range(first, last + 1))):
                got = (get_block(ebs, str(snap.snapshot_id), index, tokens[index])
                       if index in tokens else bytes(BLOCK))
                self.compare(snap, index * BLOCK, got, "boto3")
        # 2. Unsealed drafts through new/ of the chaos mount (served from the spool).
        for snap in unsealed:
            self.read_through(snap, self.mnt / "new" / snap.name, "new/ (unsealed)")
        self.stats.add("ops", "snapshots left unsealed", len(unsealed))
        # 3. Sealed ones through a fresh read-only mount.
        if self.mount is not None:
            self.mount.stop()
            self.mount_up.clear()
        fresh = MountProc(self.server, self.work / "fresh", "--read-only", "--log-level", "info",
                          spool_dir=self.work / "fresh-spool")
        try:
            fresh.start()
            for snap in sealed + self.readable[: self.args.base]:
                self.read_through(snap, fresh.path / str(snap.snapshot_id), "fresh mount")
        finally:
            fresh.stop()

    def read_through(self, snap: Snap, path: Path, how: str) -> None:
        lo = snap.start - snap.start % BLOCK
        hi = -(-snap.end // BLOCK) * BLOCK
        try:
            drop_page_cache(path)
            with open(path, "rb") as f:
                f.seek(lo)
                got = f.read(hi - lo)
        except OSError as exc:
            n = sum(e - s for s, e in snap.acked)
            with self.stats.lock:
                self.stats.bytes_lost += n
            self.stats.note("lost", f"{snap.name} via {how}: unreadable ({exc}); "
                            f"{n} acknowledged bytes counted lost")
            return
        self.compare(snap, lo, got, how)

    def _unmount_all(self) -> None:
        proc = self.mount.proc if self.mount is not None else None
        if os.path.ismount(self.mnt) and proc is not None and proc.poll() is None:
            # The orderly way first: what is buffered gets stored.
            _run([sys.executable, "-m", "ebsfs", "umount", str(self.mnt)], self.stats,
                 "teardown umount", env=self.server.env(), timeout=60)
        for path in (self.mnt, self.work / "fresh"):
            if os.path.ismount(path):
                lazy_unmount(path)
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def _stop_server(self) -> None:
        proc = self.server.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.server.proc = None

    def report(self) -> int:
        s = self.stats
        bad = s.bytes_lost or s.bytes_wrong or s.hung or s.lost or s.wrong or s.broken
        lines = [
            "",
            f"chaos summary ({self.args.duration:.0f}s, seed {self.args.seed}, "
            f"{self.args.writers} writers, {self.args.readers} readers)",
            "  operations:      " + ", ".join(f"{k} {v}" for k, v in sorted(s.ops.items())),
            "  faults survived: " + (", ".join(f"{k} {v}" for k, v in sorted(s.faults.items()))
                                     or "none"),
            f"  bytes written:   {s.bytes_written} (acknowledged by fsync)",
            f"  bytes read:      {s.bytes_read} (readers, all compared)",
            f"  bytes checked:   {s.bytes_checked} (after the run: boto3, fresh mount, new/)",
            f"  bytes lost:      {s.bytes_lost}",
            f"  bytes wrong:     {s.bytes_wrong}",
            "  reader errors:   " + (", ".join(f"{k} {v}" for k, v in
                                               sorted(s.read_errors.items())) or "none"),
            "  writer errors:   " + (", ".join(f"{k} {v}" for k, v in
                                               sorted(s.write_errors.items())) or "none"),
            f"  hung:            {len(s.hung)}",
            f"  bench failures:  {len(s.broken)}",
            f"  result:          {'FAILED' if bad else 'OK'}",
        ]
        for kind in ("lost", "wrong", "hung", "broken"):
            for text in getattr(s, kind):
                lines.append(f"  {kind}: {text}")
        print("\n".join(lines), flush=True)
        return 1 if bad else 0

    def teardown(self) -> None:
        """Leave nothing behind: mounts, the server, the loop device (and the files).

        Each step runs whatever the others did, with Ctrl-C and SIGTERM ignored meanwhile."""
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for step in (self._unmount_all, self._stop_server, self.disk.teardown):
                try:
                    step()
                except Exception as exc:
                    print(f"chaos: teardown: {step.__name__}: {exc}", file=sys.stderr)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        s = self.stats
        if self.args.keep or s.lost or s.wrong or s.hung or s.broken or s.bytes_lost:
            with contextlib.suppress(OSError):
                self.disk.image.unlink()  # the logs and the server's data stay
            print(f"chaos: logs kept in {self.work}", flush=True)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=120.0, help="seconds of chaos (120)")
    p.add_argument("--writers", type=int, default=2, help="parallel dd writers (2)")
    p.add_argument("--readers", type=int, default=2, help="parallel readers (2)")
    p.add_argument("--base", type=int, default=2, help="snapshots uploaded first for readers")
    p.add_argument("--snap-mib", type=int, default=12, help="most data per snapshot, MiB")
    p.add_argument("--spool-mib", type=int, default=160, help="size of the spool's disk, MiB")
    p.add_argument("--gap", type=float, default=6.0, help="seconds between fault events")
    p.add_argument("--outage", type=float, default=3.0, help="seconds a kill keeps it down")
    p.add_argument("--events", type=int, default=0, help="stop after this many events (0: none)")
    p.add_argument("--pause", type=float, default=0.05, help="seconds between a writer's dd's")
    p.add_argument("--seal-timeout", type=float, default=300.0,
                   help="seconds of `ebsfs complete` retries before a seal counts as hung")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--workdir", default=None, help="where the work directory goes (/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chaos bench; the exit status (see the module's docstring)."""
    args = parse_args(list(argv or []))
    if os.geteuid() != 0:
        print("chaos: needs root (FUSE, loop devices, mount)", file=sys.stderr)
        return 2
    chaos = Chaos(args)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with it ignored, and Python keeps that.
    old = {sig: signal.signal(sig, on_term) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"chaos: work directory {chaos.work}, seed {args.seed}", flush=True)
    try:
        try:
            chaos.setup()
        except (OSError, subprocess.CalledProcessError, AssertionError, RuntimeError) as exc:
            print(f"chaos: set-up failed: {exc}", file=sys.stderr)
            return 2
        return chaos.run()
    except Exception:
        traceback.print_exc()
        print("chaos: the bench itself failed (above); the run proves nothing", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        chaos.halt.set()
        chaos.stop.set()
        print("chaos: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        chaos.halt.set()
        chaos.stop.set()
        chaos.teardown()
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
