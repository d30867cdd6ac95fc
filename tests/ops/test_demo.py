"""scripts/demo.sh (make demo) cleans up everything it started when a step fails or it is
interrupted. (Its successful run is `make demo` itself, which .ci/run runs first.)"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo.sh"


def _leftovers(work: str) -> list[str]:
    found = []
    with open("/proc/self/mounts") as mounts:
        found += [line for line in mounts if work in line]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if work in cmdline:
            found.append(f"process {pid}: {cmdline}")
    if os.path.exists(work):
        found.append(f"directory {work}")
    return found


def _work_dir(output: str) -> str:
    match = re.search(r"(/tmp/ebsfs-demo\.[A-Za-z0-9]+)/mnt", output)
    assert match, output
    return match.group(1)


def test_failing_step_cleans_up(tmp_path: Path) -> None:
    # A mkfs.ext4 that fails, found first on PATH: the demo's image-building step fails
    # after the server is running and the mount is up.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mkfs.ext4").write_text("#!/bin/sh\necho 'mkfs.ext4: simulated failure' >&2\nexit 1\n")
    (fake / "mkfs.ext4").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "EBSFS_CONFIG": "/dev/null"}
    proc = subprocess.run(
        [str(DEMO)], capture_output=True, text=True, timeout=180, env=env, cwd=ROOT
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "simulated failure" in output
    assert "demo FAILED" in output
    assert "==> mounting ebsfs" in output  # it got as far as mounting
    assert _leftovers(_work_dir(output)) == []


def _start_demo() -> subprocess.Popen[str]:
    """scripts/demo.sh running with its output (both streams) on a pipe."""
    env = {**os.environ, "EBSFS_CONFIG": "/dev/null"}
    return subprocess.Popen(
        [str(DEMO)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_interrupted_demo_cleans_up() -> None:
    demo = _start_demo()
    assert demo.stdout is not None
    seen = []
    deadline = time.monotonic() + 120
    for line in demo.stdout:
        seen.append(line)
        if line.startswith("==> building"):
            demo.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(seen)
    rest, _ = demo.communicate(timeout=120)
    output = "".join(seen) + rest
    assert demo.returncode == 130, output
    assert "demo FAILED" in output
    assert _leftovers(_work_dir(output)) == []


def test_crashed_mount_daemon_is_cleaned_up_too() -> None:
    demo = _start_demo()
    assert demo.stdout is not None
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if line.startswith("==> building"):
            # The mount's daemon dies: what is left is a dead FUSE mount.
            mountpoint = Path(_work_dir("".join(seen))) / "mnt"
            os.kill(int(os.getxattr(mountpoint, "user.ebsfs.pid")), signal.SIGKILL)
            break
    rest, _ = demo.communicate(timeout=120)
    output = "".join(seen) + rest
    assert demo.returncode != 0, output
    assert "demo FAILED" in output
    assert _leftovers(_work_dir(output)) == []
