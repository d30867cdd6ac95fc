"""docs/usage.md cannot drift from the code: its ```sh examples run here, against the local
server, through a real FUSE mount.

Convention (docs/usage.md says it too): ```sh blocks are run, in order, in one bash shell with
``set -euo pipefail``, from a scratch directory; ```text, ```console and bare ``` blocks are
not. ``MOUNTPOINT`` is replaced by an empty directory that the examples mount themselves; the
environment points ebsfs and the AWS CLI at the local server, which already holds one
completed snapshot named ``example``: a 64 MiB ext4 image (label ``example``, with
``hello.txt``) in a 1 GiB volume.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.serverproc import LocalServer, upload_image

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
RUN_TIMEOUT = 240


def shell_examples(path: Path) -> list[tuple[int, str]]:
    """The ```sh blocks of a Markdown file with the line each starts on."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(1) == "sh":
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((line, match.group(2)))
    return blocks


def _mounts_under(root: Path) -> list[str]:
    found = []
    with open("/proc/self/mounts") as mounts:
        for entry in mounts:
            target = entry.split()[1].replace("\\040", " ")
            if target == str(root) or target.startswith(f"{root}/"):
                found.append(target)
    return found


def _unmount_everything_under(root: Path, env: dict[str, str]) -> None:
    # Deepest first: loop mounts inside the FUSE mount's files come before the FUSE mount.
    for target in sorted(_mounts_under(root), key=len, reverse=True):
        if subprocess.run(["umount", target], capture_output=True, timeout=60).returncode:
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=60)
    for dev in subprocess.run(
        ["losetup", "--list", "--noheadings", "--raw", "-O", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    ).stdout.splitlines():
        name, _, backing = dev.partition(" ")
        if str(root) in backing:
            subprocess.run(["losetup", "-d", name], capture_output=True, timeout=30)


def _example_image(tmp_path: Path) -> Path:
    files = tmp_path / "example-files"
    files.mkdir()
    (files / "hello.txt").write_text("hello from the example snapshot\n")
    image = tmp_path / "example.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "example", "-d", str(files), str(image)],
        check=True,
        timeout=60,
    )
    return image


def test_usage_examples_run(server: LocalServer, tmp_path: Path) -> None:
    blocks = shell_examples(DOCS / "usage.md")
    assert len(blocks) >= 8, "docs/usage.md should show its flows as ```sh examples"
    mountpoint = tmp_path / "mnt"
    scratch = tmp_path / "work"
    mountpoint.mkdir()
    scratch.mkdir()
    upload_image(server.ebs(), server.ec2(), _example_image(tmp_path), 1, name="example")
    env = server.env()
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        EBSFS_CONFIG="/dev/null",
        EBSFS_SPOOL_DIR=str(tmp_path / "spool"),
        HOME=str(tmp_path),
    )
    script = ["set -euo pipefail", f"cd {scratch}"]
    for line, body in blocks:
        script.append(f"echo '### docs/usage.md line {line}' >&2")
        script.append(body.replace("MOUNTPOINT", str(mountpoint)))
    try:
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=env,
            cwd=scratch,
        )
    finally:
        if shutil.which("umount"):
            _unmount_everything_under(tmp_path, env)
    where = re.findall(r"### (docs/usage.md line \d+)", result.stderr)
    assert result.returncode == 0, (
        f"example failed in {where[-1] if where else 'the first block'} "
        f"(exit {result.returncode}):\n--- stdout\n{result.stdout[-3000:]}\n"
        f"--- stderr\n{result.stderr[-3000:]}\n--- server log\n{server.log_text()[-2000:]}"
    )
    assert len(where) == len(blocks)
