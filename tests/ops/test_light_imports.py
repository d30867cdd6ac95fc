"""Layers stay apart: the commands that only read the mount table and an attribute do not
load the FUSE layer, trio or boto3 (slow to import, not needed to unmount), and the FUSE
edge and the daemon's helpers import nothing above them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ebsfs

HEAVY = ("pyfuse3", "trio", "boto3", "botocore")


@pytest.mark.parametrize("module", ["ebsfs.commands.umount", "ebsfs.commands.stats"])
def test_command_imports_no_heavy_module(module: str) -> None:
    code = (
        f"import json, sys, {module}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == [], f"importing {module} loads {out.stdout.strip()}"


#: What each package may import of ebsfs: itself and the layers below it
#: (docs/architecture.md, "The package tree"). commands/ is the top and may import anything.
BELOW = {
    "core": {"core"},
    "options": {"options", "core"},
    "aws": {"aws", "core", "options"},
    "read": {"read", "core", "aws", "options"},
    "write": {"write", "core", "aws", "read", "options"},
    "fs": {"fs", "core", "aws", "read", "write", "options"},
    "daemon": {"daemon", "core", "options"},
    "server": {"server", "core", "options", "daemon"},
}
#: daemon/run.py wires the whole mount: it may import every layer.
WIRING = {"daemon/run.py"}


def _ebsfs_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("ebsfs.") and n.count(".") >= 1}


@pytest.mark.parametrize("package", sorted(BELOW))
def test_no_import_of_a_layer_above(package: str) -> None:
    root = Path(ebsfs.__file__).parent
    wrong = {}
    for path in sorted((root / package).glob("*.py")):
        if str(path.relative_to(root)) in WIRING:
            continue
        above = _ebsfs_imports(path) - BELOW[package]
        if above:
            wrong[path.name] = sorted(above)
    assert wrong == {}


#: The one module allowed past the size every other keeps (the server's storage engine).
LONG = {"server/storage.py"}


def test_no_module_is_over_450_lines() -> None:
    root = Path(ebsfs.__file__).parent
    long = {
        str(path.relative_to(root)): n
        for path in root.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 450
    }
    assert set(long) <= LONG, long
