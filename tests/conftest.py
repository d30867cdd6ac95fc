"""Fixtures shared by every test package: the local server as a real subprocess."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.serverproc import LocalServer

# No test may reach the EC2 instance metadata address (it is off this machine): every process
# the suite starts inherits this; the tests of the metadata lookup use a loopback fake.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.fixture(scope="session", autouse=True)
def _daemon_logs_stay_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A detached mount with no system log here logs to EBSFS_LOG_DIR (else /var/log/ebsfs):
    keep the test mounts' logs out of the machine's."""
    saved = os.environ.get("EBSFS_LOG_DIR")
    os.environ["EBSFS_LOG_DIR"] = str(tmp_path_factory.mktemp("daemon-logs"))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("EBSFS_LOG_DIR", None)
        else:
            os.environ["EBSFS_LOG_DIR"] = saved


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    """A fresh ``ebsfs server`` with default flags, its data in tmp_path, stopped afterwards."""
    srv = LocalServer(tmp_path / "server-data")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., LocalServer]]:
    """Start servers with given flags: ``server_factory("--latency-ms", "50")``; each gets
    its own data directory and is stopped at teardown."""
    started: list[LocalServer] = []

    def make(*flags: str, data_dir: Path | None = None) -> LocalServer:
        srv = LocalServer(data_dir or tmp_path / f"server-data-{len(started)}", *flags)
        started.append(srv)
        srv.start()
        return srv

    try:
        yield make
    finally:
        for srv in started:
            srv.stop()


#: Under xdist (`make test`) the longest tests must start first, or one of them runs on alone
#: at the end while the other workers idle: modules that start mounts go first, then those
#: that start servers or other processes, then the unit tests.
_MOUNTS = {"MountProc", "mount_factory", "mounted"}
_PROCESSES = {"LocalServer", "subprocess", "server", "server_factory", "shared"}
#: Modules with one test of a minute or more (a loop of ten mounts, `make install`, the chaos
#: smoke run): first of all.
_LONGEST = {"tests/ops/test_umount_safety.py", "tests/ops/test_readme_tour.py",
            "tests/property/test_chaos_smoke.py"}


def _weight(item: pytest.Item) -> int:
    if item.nodeid.split("::")[0] in _LONGEST:
        return 3
    module = getattr(item, "module", None)
    names = set(getattr(item, "fixturenames", ())) | set(vars(module) if module else ())
    return 2 if names & _MOUNTS else 1 if names & _PROCESSES else 0


#: Run each of these modules (or every module under these folders) on one xdist worker: their
#: tests share a module-scoped server or snapshots (made once per worker that runs any of
#: them), or one machine-wide path (test_mount_ops's /usr/local/sbin/ebsfs link).
_ONE_WORKER = ("tests/server/", "tests/write/test_putproc.py", "tests/ops/test_mount_ops.py")


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadgroup`` with the modules of _ONE_WORKER as groups. (xdist_group marks
    reach the scheduler through a node-id suffix that pytest 9.2 no longer takes; a suffix
    that does arrive is still honoured.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if "@" in nodeid:
                return nodeid.rsplit("@", 1)[-1]
            path = nodeid.split("::")[0]
            return path if path.startswith(_ONE_WORKER) else nodeid

    return ModuleGroups(config, log)  # type: ignore[arg-type]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Heavy modules first; each module's tests stay together and in order."""
    weights: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        weights[path] = max(weights.get(path, 0), _weight(item))
    order = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (-weights[item.nodeid.split("::")[0]], order[id(item)]))
