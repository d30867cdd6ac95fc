#!/usr/bin/env bash
# The whole ebsfs flow against the local server, as `make demo` runs it:
# start the server, mount, dd an ext4 image into a new snapshot, seal it, loop-mount the
# completed snapshot read-only and list its files. Everything it starts is stopped and
# removed on the way out, whether a step failed or not.
set -euo pipefail

cd "$(dirname "$0")/.."
EBSFS=${EBSFS:-$PWD/.venv/bin/ebsfs}
PY=${PY:-$PWD/.venv/bin/python}

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: FUSE and loop mounts need it (sudo make demo)"
[ -x "$EBSFS" ] || die "$EBSFS is missing: run 'make demo' rather than this script"
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"

WORK=$(mktemp -d /tmp/ebsfs-demo.XXXXXX)
MNT=$WORK/mnt
LOOP=$WORK/loop
SERVER_PID=""

# findmnt reads the mount table: mountpoint(1) would stat a mount whose daemon died and fail.
is_mounted() { findmnt -rn -M "$1" >/dev/null 2>&1; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if is_mounted "$LOOP"; then
        umount "$LOOP" || umount -l "$LOOP"
    fi
    if is_mounted "$MNT"; then
        if stat "$MNT" >/dev/null 2>&1; then
            timeout 120 "$EBSFS" umount "$MNT"
        fi
        is_mounted "$MNT" && fusermount3 -uz "$MNT"
    fi
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID"
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    if [ "$rc" -ne 0 ]; then
        for log in "$WORK"/*.log; do
            [ -s "$log" ] || continue
            printf '\n--- last lines of %s ---\n' "$(basename "$log")" >&2
            tail -n 20 "$log" >&2
        done
        printf '\ndemo FAILED (exit %s); everything it started has been stopped\n' "$rc" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$MNT" "$LOOP" "$WORK/files/etc" "$WORK/spool"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ENDPOINT_URL_EBS=http://127.0.0.1:$PORT AWS_ENDPOINT_URL_EC2=http://127.0.0.1:$PORT
# Settings of this machine (/etc/ebsfs/ebsfs.toml) must not leak into the demo.
export EBSFS_CONFIG=/dev/null
# Without a system log the mount logs to a file: here, so that a failure shows its last lines.
export EBSFS_LOG_DIR=$WORK

step "starting the local server on 127.0.0.1:$PORT"
"$EBSFS" server --data-dir "$WORK/server" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited at start"
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || die "the server did not listen within 10 s"

step "mounting ebsfs at $MNT"
"$EBSFS" mount "$MNT" --spool-dir "$WORK/spool" --log-level info
ls -la "$MNT"

step "building a small ext4 image"
echo "hello from ebsfs" >"$WORK/files/hello.txt"
head -c 3M /dev/urandom >"$WORK/files/random.bin"
cp /etc/os-release "$WORK/files/etc/"
truncate -s 64M "$WORK/disk.img"
mkfs.ext4 -q -F -L demo -d "$WORK/files" "$WORK/disk.img"

step "writing it into a new snapshot: dd of=$MNT/new/demo"
dd if="$WORK/disk.img" of="$MNT/new/demo" bs=1M conv=fsync status=none
ls -la "$MNT/new"

step "sealing: ebsfs complete $MNT/new/demo"
"$EBSFS" complete "$MNT/new/demo"

SNAP=$(basename "$(readlink "$MNT/by-name/demo")")
[ -n "$SNAP" ] && [ -f "$MNT/$SNAP" ] || die "the completed snapshot is not in $MNT"
step "the completed snapshot $SNAP"
"$EBSFS" ls
ls -la "$MNT" "$MNT/by-name"
cmp -n "$(stat -c %s "$WORK/disk.img")" "$WORK/disk.img" "$MNT/$SNAP"
echo "its first $(stat -c %s "$WORK/disk.img") bytes are the image, byte for byte"
e2fsck -fn "$MNT/$SNAP"

step "loop-mounting it read-only at $LOOP and listing its files"
mount -o loop,ro "$MNT/$SNAP" "$LOOP"
ls -laR "$LOOP"
cat "$LOOP/hello.txt"
cmp "$WORK/files/random.bin" "$LOOP/random.bin"

step "the mount's counters"
"$EBSFS" stats "$MNT"

step "cleaning up"
umount "$LOOP"
# The kernel lets go of an autoclear loop device a moment after its unmount; until then it
# holds the snapshot file and `ebsfs umount` (like umount(8)) refuses the busy mount.
for _ in $(seq 100); do [ -z "$(losetup -j "$MNT/$SNAP")" ] && break; sleep 0.1; done
"$EBSFS" umount "$MNT"
# It returns once the mount is gone from the mount table and the daemon has exited.
! is_mounted "$MNT" || die "$MNT is still mounted after ebsfs umount"
printf '\ndemo OK: wrote, sealed, loop-mounted and read back %s\n' "$SNAP"
