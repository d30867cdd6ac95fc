"""The mount daemon: checks, daemonising, the trio/pyfuse3 session, signals and teardown.

``run_mount(config)`` is what ``ebsfs mount`` calls. Without ``--foreground`` the process
forks, and the parent exits only once the child's mount answers or says why it could not
(one line). See docs/architecture.md ("Daemon life cycle") and docs/operations.md.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pyfuse3
import trio

from ebsfs.aws.api import Api
from ebsfs.aws.runner import Calls
from ebsfs.core.blocks import BLOCK_SIZE
from ebsfs.core.errors import EbsfsError, MountError, UsageError
from ebsfs.core.exgroups import first_error
from ebsfs.daemon import mounttable
from ebsfs.daemon.logsetup import describe, setup_logging
from ebsfs.daemon.notify import notify_ready, notify_stopping
from ebsfs.daemon.tuning import TRIM_SLACK, set_kernel_read_ahead, tame_malloc, trim_memory
from ebsfs.fs.catalog import Catalog, CatalogConfig
from ebsfs.fs.ops import EbsfsOperations, OpsConfig
from ebsfs.fs.partview import PartitionTables
from ebsfs.fs.scratch import ScratchDirectory
from ebsfs.options.config import MountConfig
from ebsfs.read.diskcache import cache_file
from ebsfs.read.stack import ReadStacks, StackConfig
from ebsfs.write.upload import PutProcess
from ebsfs.write.wiring import (
    MountContext,
    close_new_directory,
    open_new_directory,
    upload_process,
)

log = logging.getLogger(__name__)

FUSE_DEVICE = "/dev/fuse"


@dataclass(frozen=True)
class DaemonOptions:
    """How the mount process runs (not part of what it mounts)."""

    log_file: str | None = None
    #: Mount over a directory that is not empty (its files are hidden while mounted).
    nonempty: bool = False


def check_mountpoint(path: str, nonempty: bool = False) -> str:
    """The absolute mount point; MountError if it cannot be mounted on (or, unless
    ``nonempty``, holds files that the mount would hide)."""
    # Symlinks resolved: the mount table names the directory mounted on, and the daemon
    # finds its own mount (and what holds it) there.
    mountpoint = os.path.realpath(path)
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(
                f"{mountpoint} is a dead ebsfs mount; run: ebsfs umount {mountpoint}"
            ) from None
        raise MountError(f"mount point {mountpoint}: {exc.strerror}") from None
    if not os.path.isdir(mountpoint) or not st:
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")
    if not os.path.exists(FUSE_DEVICE):
        raise MountError(f"FUSE is unavailable: {FUSE_DEVICE} does not exist (modprobe fuse?)")
    if not nonempty:
        try:
            with os.scandir(mountpoint) as entries:
                first = next(entries, None)
        except OSError as exc:
            raise MountError(f"mount point {mountpoint}: {exc.strerror}") from None
        if first is not None:
            raise MountError(
                f"mount point {mountpoint} is not empty ({first.name} ...): the mount would "
                "hide its files; use an empty directory, or --nonempty"
            )
    return mountpoint


def fuse_options(config: MountConfig) -> set[str]:
    """Options for ``pyfuse3.init``."""
    options = set(pyfuse3.default_options)
    options |= {"fsname=ebsfs", "subtype=ebsfs"}
    if config.read_only:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    return options


async def _serve(
    config: MountConfig,
    options: DaemonOptions,
    ready: Callable[[], None],
    api: Api,
    put_process: PutProcess | None = None,
) -> None:
    limiter = trio.CapacityLimiter(config.max_concurrency)
    calls = Calls(limiter)
    async with trio.open_nursery() as nursery:
        stacks = ReadStacks(
            api,
            StackConfig(
                cache_size=config.cache_size,
                read_ahead=config.read_ahead,
                max_concurrency=config.max_concurrency,
                io_timeout=config.io_timeout,
                disk_cache=config.disk_cache,
                disk_cache_file=str(cache_file(config.cache_dir, config.mountpoint)),
            ),
            nursery,
            calls=calls,
        )
        catalog = Catalog(
            api,
            calls,
            CatalogConfig(
                snapshot_ids=config.snapshots,
                owner=config.owner,
                filters=config.filters,
                refresh=config.refresh,
            ),
        )
        await catalog.load(background=True)
        newdir = await open_new_directory(
            MountContext(config, api, nursery, limiter, stacks, put_process)
        )

        async def delete(snapshot_id: str) -> None:
            await calls.run(api.delete_snapshot, snapshot_id)

        def scratch(partitions: PartitionTables) -> ScratchDirectory:
            return ScratchDirectory(
                Path(config.spool_dir) / "scratch",
                config.scratch_limit,
                partitions.resolve,
                partitions.read_disk,
            )

        ops = EbsfsOperations(
            catalog,
            stacks,
            newdir,
            OpsConfig(read_only=config.read_only, allow_delete=config.allow_delete),
            nursery,
            delete_snapshot=delete,
            scratch=None if config.read_only else scratch,
        )
        try:
            pyfuse3.init(ops, config.mountpoint, fuse_options(config))
        except RuntimeError as exc:
            raise MountError(f"cannot mount {config.mountpoint}: {exc}") from None
        # Ours is the top mount at the path right now; later another may cover it.
        own = mounttable.top_mount(config.mountpoint)
        unmounted = False
        try:
            stopping = trio.Event()
            nursery.start_soon(catalog.refresher)
            nursery.start_soon(
                _signals, config.mountpoint, stopping, own.mount_id if own else None
            )
            nursery.start_soon(trim_memory, config.cache_size + TRIM_SLACK)
            # The kernel's window as the daemon's (the cache bounds both): a kernel asking
            # 64 MiB ahead of a small cache evicted blocks fetched ahead before they were read.
            kernel_ahead = stacks.read_ahead_blocks * BLOCK_SIZE
            nursery.start_soon(
                _announce_when_answering, config.mountpoint, ready, kernel_ahead, stopping
            )
            # What start-up loaded (botocore's service models, the catalog) lives as long as
            # the mount: keep the cycle collector from walking it again and again.
            gc.freeze()
            await pyfuse3.main(min_tasks=4, max_tasks=max(64, 2 * config.max_concurrency))
            log.info("stopping: unmounting %s", config.mountpoint)
            notify_stopping()
            await close_new_directory(newdir)
        finally:
            if ops.scratch is not None:
                ops.scratch.close()  # overlays never outlive their mount
            with contextlib.suppress(Exception):
                pyfuse3.close(unmount=True)
                unmounted = True
            if not unmounted:
                log.error("could not unmount %s cleanly", config.mountpoint)
            nursery.cancel_scope.cancel()


#: While a stop waits for a busy mount to be free, how often it looks again.
BUSY_RECHECK = 1.0


def _holders(mountpoint: str, mount_id: int | None) -> list[str]:
    """What keeps our mount (``mount_id``) busy, a mount over it included; nothing once it
    is detached from the mount table. Not whatever is on top at the path: another mount
    there would be unmounted in its place."""
    table = mounttable.mount_table()
    entry = next((e for e in table if e.mount_id == mount_id), None)
    if mount_id is None:
        entry = mounttable.top_mount(mountpoint, table)
    if entry is None or entry.fstype != mounttable.FSTYPE:
        return []
    return mounttable.holders(mountpoint, entry, {os.getpid()})


async def _signals(mountpoint: str, stopping: trio.Event, mount_id: int | None = None) -> None:
    # libfuse's unmount is lazy: stopping while a loop device or a process holds the mount
    # would leave them with I/O errors. SIGTERM and SIGHUP therefore wait until it is free
    # (as umount(8) refuses); SIGINT, or `ebsfs umount --lazy`, which detaches it first,
    # stop at once.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum != signal.SIGINT:
                held = await trio.to_thread.run_sync(_holders, mountpoint, mount_id)
                if held:
                    log.warning(
                        "%s: %s is busy, held by: %s; unmounting once it is free "
                        "(SIGINT or `ebsfs umount --lazy` to stop now)",
                        name, mountpoint, "; ".join(held[:5]),
                    )
                    name = await _until_free(mountpoint, mount_id, signals) or name
            log.info("%s: unmounting %s", name, mountpoint)
            stopping.set()
            pyfuse3.terminate()
            return


async def _until_free(
    mountpoint: str, mount_id: int | None, signals: AsyncIterator[int]
) -> str | None:
    """Return once nothing holds the mount, or with "SIGINT" when one arrives first."""
    while True:
        with trio.move_on_after(BUSY_RECHECK):
            async for signum in signals:
                if signum == signal.SIGINT:
                    return "SIGINT"
        if not await trio.to_thread.run_sync(_holders, mountpoint, mount_id):
            return None


async def _announce_when_answering(
    mountpoint: str,
    ready: Callable[[], None],
    read_ahead: int = 0,
    stopping: trio.Event | None = None,
) -> None:
    # A stat of the root goes through the kernel to our own handlers: when it returns, the
    # mount answers.
    try:
        st = await trio.to_thread.run_sync(os.stat, mountpoint)
    except OSError as exc:
        if stopping is not None and stopping.is_set():
            # A signal came before the mount first answered: the unmount broke the stat off
            # (ECONNABORTED); stopping cleanly is what was asked for.
            log.info("stopped before %s answered (%s)", mountpoint, exc.strerror)
            return
        raise
    if read_ahead > 0:
        set_kernel_read_ahead(st.st_dev, read_ahead)
    log.info("mounted %s", mountpoint)
    ready()
    notify_ready(f"serving {mountpoint}")


def _setup_logging(config: MountConfig, options: DaemonOptions, daemon: bool) -> str:
    """Install the daemon's log handler; returns where the log goes, in words."""
    if options.log_file:
        try:
            stream = open(options.log_file, "a", buffering=1)  # noqa: SIM115 - lives as we do
        except OSError as exc:
            raise UsageError(f"--log-file {options.log_file}: {exc.strerror}") from None
        handler = setup_logging(config.log_level, stream)
    elif daemon:
        # Detached from the terminal: the system log when one listens, else a file named
        # after the mount point (never nowhere: the reasons for an EIO are in the log).
        handler = setup_logging(
            config.log_level,
            open(os.devnull, "w"),  # noqa: SIM115
            syslog=True,
            fallback_name=config.mountpoint,
        )
    else:
        handler = setup_logging(config.log_level)
    return describe(handler)


def _run(config: MountConfig, options: DaemonOptions, ready: Callable[[], None]) -> None:
    tame_malloc()
    api = Api(config.aws)
    put_process = upload_process(config, api)
    if put_process is not None:
        # Forked now, while this process has one thread: it shares the loaded modules and
        # clients, and the first upload does not wait for a new interpreter to start.
        put_process.prefork()
    try:
        trio.run(_serve, config, options, ready, api, put_process)
    except BaseExceptionGroup as group:
        raise first_error(group) from None


def run_mount(config: MountConfig, options: DaemonOptions | None = None) -> int:
    """Mount and serve until unmounted; returns the exit code (see ``ebsfs mount --help``)."""
    options = options or DaemonOptions()
    if options.log_file:
        # The daemon works from /: a relative path means the one it was given from here.
        options = replace(options, log_file=os.path.abspath(options.log_file))
    mountpoint = check_mountpoint(config.mountpoint, options.nonempty)
    if mountpoint != config.mountpoint:
        config = replace(config, mountpoint=mountpoint)
    if config.foreground:
        _setup_logging(config, options, daemon=False)
        _run(config, options, lambda: None)
        return 0
    return _daemonise(config, options)


def _daemonise(config: MountConfig, options: DaemonOptions) -> int:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return _wait_for_child(read_fd, pid, config.mountpoint)
    # The child: a new session, away from the terminal; reports once through the pipe.
    os.close(read_fd)
    code = 0
    reported = False

    def report(text: str) -> None:
        nonlocal reported
        if not reported:
            reported = True
            with contextlib.suppress(OSError):
                os.write(write_fd, text.encode())
                os.close(write_fd)

    try:
        os.setsid()
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        destination = _setup_logging(config, options, daemon=True)
        # stdout/stderr to /dev/null only now: a failed logging set-up is still reported.
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        log.info("pid %d, logging to %s", os.getpid(), destination)
        _run(config, options, partial(report, f"ready {destination}\n"))
    except EbsfsError as exc:
        if logging.getLogger().handlers:  # else logging's last resort prints it a second time
            log.error("%s", exc)
        report(f"error {exc.exit_code} {exc}\n")
        code = exc.exit_code
    except BaseException as exc:  # the daemon's last word must reach the parent
        log.exception("ebsfs mount daemon failed")
        report(f"error 1 unexpected failure: {type(exc).__name__}: {exc}\n")
        code = 1
    finally:
        report("error 1 the mount stopped before it answered\n")
        logging.shutdown()
        os._exit(code)


def _wait_for_child(read_fd: int, pid: int, mountpoint: str) -> int:
    with os.fdopen(read_fd, "r") as pipe:
        line = pipe.readline().strip()
    if line == "ready" or line.startswith("ready "):
        # One line, so that whoever mounted knows where to look when something goes wrong.
        destination = line.partition(" ")[2] or "the system log"
        print(f"ebsfs: mounted {mountpoint}; daemon log: {destination}", file=sys.stderr)
        return 0
    if line.startswith("error "):
        _, code, message = line.split(" ", 2)
        print(f"ebsfs: {message}", file=sys.stderr)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        return int(code)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    print(f"ebsfs: the mount daemon for {mountpoint} died before it answered", file=sys.stderr)
    return MountError.exit_code
