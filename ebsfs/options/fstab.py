"""The ``mount -t fuse.ebsfs`` entry form: mount.fuse3's argv turned into ``ebsfs mount``.

``mount -t fuse.ebsfs ebsfs /mnt/snapshots -o ro,region=eu-west-1,_netdev`` (or the same
line in /etc/fstab) makes mount.fuse3 run ``ebsfs ebsfs /mnt/snapshots -o ro,region=...``,
which :func:`translate` turns into ``mount /mnt/snapshots --read-only --region eu-west-1``.
The ``-o`` names come from the option table (table.py); docs/operations.md lists them.
"""

from collections.abc import Iterable, Sequence

from ebsfs.core.errors import UsageError
from ebsfs.options.table import MOUNT, Colon


def _value_options() -> dict[str, str]:
    return {
        name: option.flag
        for option in MOUNT
        if option.kind in ("value", "append") and option.flag is not None
        for name in option.fstab
    }


def _flag_options() -> dict[str, str]:
    out: dict[str, str] = {}
    for option in MOUNT:
        if option.kind not in ("switch", "flag", "tristate") or option.flag is None:
            continue
        for name in option.fstab:
            out[name] = option.flag
        if option.kind == "tristate":
            out["no_" + option.name] = option.off_flag
    return out


#: ``name=value`` options and the ``ebsfs mount`` flag each becomes. Names may use ``-`` or
#: ``_``; ``snapshot`` and ``filter`` may repeat, and ``snapshot`` also takes ``a:b:c``;
#: ``owner=self:shared`` is ``--owner self,shared`` (a comma would end the option).
VALUE_OPTIONS: dict[str, str] = _value_options()
#: Bare options that become an ``ebsfs mount`` flag.
FLAG_OPTIONS: dict[str, str] = _flag_options()
#: What a ``:`` in the value means, by option name.
_COLON: dict[str, Colon] = {
    name: option.fstab_colon
    for option in MOUNT
    if option.fstab_colon
    for name in option.fstab
}

#: Options for mount(8) or mount.fuse3 alone, or that every ebsfs mount has anyway: the
#: kernel mount is always nosuid,nodev (libfuse's default), and ebsfs holds no device nodes,
#: set-uid programs or executables, so dev/suid/exec requests change nothing.
IGNORED_OPTIONS = frozenset(
    {
        "",
        "defaults",
        "rw",
        "_netdev",
        "nofail",
        "auto",
        "noauto",
        "user",
        "users",
        "nouser",
        "owner",
        "group",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "async",
        "atime",
        "noatime",
        "relatime",
        "norelatime",
        "strictatime",
        "nodiratime",
        "lazytime",
        "nolazytime",
        "silent",
        "loud",
    }
)

#: Prefixes of options meant for other tools (systemd's fstab generator, comments); mount(8)
#: turns ``user`` into ``user=NAME`` (the user mounting) before it runs the helper.
IGNORED_PREFIXES = ("x-", "comment=", "fsname=", "subtype=", "user=")


def is_helper_call(argv: Sequence[str], commands: Iterable[str]) -> bool:
    """True when ``argv`` (without the program name) is mount.fuse3's ``SOURCE MOUNTPOINT -o``.

    That is: the first word is neither an option nor a sub-command, and ``-o`` follows.
    mount.fuse3 always passes ``-o`` (it adds ``dev,suid`` or keeps ``nodev,nosuid``), and
    requiring it keeps a mistyped sub-command (``ebsfs mout /mnt``) from mounting anything.
    """
    if len(argv) < 2 or argv[0].startswith("-") or argv[0] in set(commands):
        return False
    return any(word == "-o" or word.startswith("-o") for word in argv[1:])


def _split_options(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def translate(argv: Sequence[str]) -> list[str]:
    """mount.fuse3's argv (``SOURCE MOUNTPOINT [-o OPTS]...``) as ``ebsfs mount`` arguments."""
    positionals: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "-o":
            if i + 1 == len(argv):
                raise UsageError("mount option -o needs a value")
            options.extend(_split_options(argv[i + 1]))
            i += 2
            continue
        if word.startswith("-o") and len(word) > 2:
            options.extend(_split_options(word[2:]))
        elif word in ("-n", "-v", "-s", "-f"):
            pass  # mount(8)'s no-mtab, verbose, sloppy and fake flags: nothing for ebsfs to do
        elif word.startswith("-"):
            raise UsageError(f"unknown argument {word!r} in the mount helper form")
        else:
            positionals.append(word)
        i += 1
    if len(positionals) == 1:
        mountpoint = positionals[0]  # mount.fuse3 leaves out an empty source
    elif len(positionals) == 2:
        mountpoint = positionals[1]
    else:
        raise UsageError("mount helper form: expected SOURCE MOUNTPOINT [-o OPTIONS]")
    return ["mount", mountpoint, *translate_options(options)]


def translate_options(options: Iterable[str]) -> list[str]:
    """Each ``-o`` option as ``ebsfs mount`` arguments; UsageError for an unknown one."""
    out: list[str] = []
    for option in options:
        if option in IGNORED_OPTIONS or option.startswith(IGNORED_PREFIXES):
            continue
        name, sep, value = option.partition("=")
        key = name.replace("-", "_")
        if not sep:
            if key in FLAG_OPTIONS:
                out.append(FLAG_OPTIONS[key])
                continue
            if key in VALUE_OPTIONS:
                raise UsageError(f"mount option {name!r} needs a value ({name}=...)")
            raise UsageError(f"unknown mount option {option!r}")
        if key not in VALUE_OPTIONS:
            if key in FLAG_OPTIONS:
                raise UsageError(f"mount option {name!r} takes no value")
            raise UsageError(f"unknown mount option {name!r}")
        if not value:
            raise UsageError(f"mount option {name!r} needs a value ({name}=...)")
        colon = _COLON.get(key)
        if colon == "comma":
            value = value.replace(":", ",")
        values = value.split(":") if colon == "repeat" else [value]
        for item in values:
            out.extend([VALUE_OPTIONS[key], item])
    return out
