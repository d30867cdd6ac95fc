"""Fixtures of the property and chaos tests: real mounts (tests.mounting) against the server."""

from tests.mounting import mount_factory

__all__ = ["mount_factory"]
