"""Fixtures of the server tests: one server per module for tests that only look at their own
snapshots (starting a server costs about a second), with its boto3 clients made once."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import LocalServer


class Shared:
    """A module's server and its clients."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.ebs: Any = server.ebs()
        self.ec2: Any = server.ec2()
        self.ebs_raw: Any = server.ebs(parameter_validation=False)

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    srv = LocalServer(tmp_path_factory.mktemp("shared") / "data")
    srv.start()
    try:
        yield Shared(srv)
    finally:
        srv.stop()
