"""The README's five-minute tour, run literally: `make install`, then every ```sh block of the
tour in order, in one shell, as a new user would type them.

It runs in a private mount namespace whose /etc, /usr/local and /var are copy-on-write
overlays (so `make install` and the tour's paths leave the host untouched) and whose /mnt is
empty; the tour itself runs in a private network namespace too, so nothing it does can leave
the machine (with no region configured, ebsfs asks the EC2 instance metadata first).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def tour_blocks() -> list[str]:
    """The ```sh blocks of the README's tour section, in order."""
    text = (REPO / "README.md").read_text()
    start = text.index("## A five-minute tour")
    end = text.index("\n## ", start + 1)
    return [m.group(2) for m in FENCE.finditer(text[start:end]) if m.group(1) == "sh"]


def test_the_tour_has_every_step() -> None:
    tour = "\n".join(tour_blocks())
    for step in ("ebsfs server", "ebsfs mount", "new/backup", "ebsfs complete", "mount -o loop",
                 "ebsfs umount", "kill"):
        assert step in tour, step


def test_the_readme_tour_runs_literally_after_make_install(tmp_path: Path) -> None:
    scratch = tmp_path / "home"
    scratch.mkdir()
    tour = tmp_path / "tour.sh"
    tour.write_text("set -euxo pipefail\n" + "\n".join(tour_blocks()))
    layers = tmp_path / "layers"
    layers.mkdir()
    q = shlex.quote
    outer = f"""
set -euo pipefail
mount -t tmpfs tmpfs {q(str(layers))}
for top in /etc /usr/local /var; do
    layer={q(str(layers))}/$(echo "$top" | tr / _)
    mkdir -p "$layer/upper" "$layer/work"
    mount -t overlay overlay -o "lowerdir=$top,upperdir=$layer/upper,workdir=$layer/work" "$top"
done
mount -t tmpfs tmpfs /mnt
rm -rf /etc/ebsfs /var/lib/ebsfs /var/tmp/ebsfs-server*
cleanup() {{
    umount /mnt/backup 2>/dev/null || true
    fusermount3 -uz /mnt/ebs 2>/dev/null || true
    if [ -f /var/tmp/ebsfs-server.pid ]; then kill "$(cat /var/tmp/ebsfs-server.pid)" || true; fi
}}
trap cleanup EXIT
make -s -C {q(str(REPO))} install
test -x /usr/local/lib/ebsfs/bin/ebsfs
test "$(readlink /usr/local/bin/ebsfs)" = /usr/local/lib/ebsfs/bin/ebsfs
test -f /etc/ebsfs/ebsfs.toml
unshare -n bash -c 'ip link set lo up && cd {q(str(scratch))} && \\
    env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root bash {q(str(tour))}'
echo TOUR-DONE
test -z "$(ls /mnt/ebs 2>/dev/null)"
"""
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", outer],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "TOUR-DONE" in proc.stdout
    assert "hello from ebsfs" in proc.stdout
    assert "the snapshot holds the image" in proc.stdout
    assert "Traceback" not in out
    # The server's lines went to its log file, not into the user's terminal.
    assert "ebsfs server listening" not in out
    # The tour cleaned up after itself: nothing left in the scratch directory.
    assert list(scratch.iterdir()) == []
