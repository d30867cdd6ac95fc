"""The chaos bench, short: one kill of each kind, and nothing lost (docs/reliability.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_chaos_smoke_loses_nothing(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "bench.chaos",
            "--duration", "35", "--gap", "3", "--outage", "2", "--events", "4",
            "--seal-timeout", "90", "--seed", "12", "--snap-mib", "6",
            "--workdir", str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the bench cleans up on SIGTERM: mounts, server, loop device
        out, err = proc.communicate(timeout=150)
        raise AssertionError(f"the chaos run did not end in time:\n{out[-3000:]}") from None
    assert "chaos summary" in out, err[-3000:]
    faults = re.search(r"faults survived: (.*)", out)
    assert faults is not None
    for kind in ("server-kill", "mount-kill", "spool-full", "faults"):
        assert f"{kind} 1" in faults.group(1), out[-3000:]
    assert re.search(r"bytes lost:\s+0\n", out), out[-3000:]
    assert re.search(r"bytes wrong:\s+0\n", out), out[-3000:]
    checked = re.search(r"bytes checked:\s+(\d+)", out)
    assert checked is not None and int(checked.group(1)) > 0
    assert proc.returncode == 0, out[-3000:] + err[-2000:]
    # Nothing left behind: no mount or loop device under the work directory.
    mounts = Path("/proc/mounts").read_text()
    assert str(tmp_path) not in mounts
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in loops
