"""What redaction costs on hostile text: every log line passes through it, on the mount's
own thread, and part of a line can come from anyone (a Name tag, a path, an endpoint's
error message)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ebsfs.core import redact as redact_mod

N = 64 * 1024


@pytest.mark.parametrize(
    "text",
    [
        "a." * (N // 2),
        "a-" * (N // 2),
        "--a" * (N // 3),
        "secret" * (N // 6),
        "x" + "secret-" * (N // 7),
        "--secret" + "-a" * (N // 2),
        "a+" * (N // 2) + ":",
    ],
    ids=["dots", "dashes", "flags", "secrets", "secret-dashes", "long-flag", "schemes"],
)
def test_redaction_of_hostile_text_is_not_quadratic(text: str) -> None:
    """Patterns with an unbounded run before a literal ([\\w.-]* then 'secret') tried every
    start of every run: 8 KB of 'a.a.' took 4 s, 32 KB 50 s, during which the mount's
    thread that logged the line answered nothing."""
    # In a process of its own: a regex holds the GIL, and a thread cannot be stopped.
    script = (
        "import sys\n"
        "from ebsfs.core import redact as redact_mod\n"
        "text = sys.stdin.read()\n"
        "redact_mod.redact(text)\n"
        "redact_mod.redact_message(text)\n"
        "print('done')\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], input=text, capture_output=True, text=True,
            timeout=20,  # hang guard: linear work takes milliseconds
        )
    except subprocess.TimeoutExpired:
        pytest.fail("redaction still running after 20 s")
    assert done.stdout == "done\n", done.stderr

@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI"),
        ("'--secret-access-key', 'hunter2hunter2'", "hunter2hunter2"),
        ("--session-token=FQoGZXIvYXdzEJr", "FQoGZXIvYXdzEJr"),
        ('"SessionToken": "IQoJb3JpZ2luX2Vj"', "IQoJb3JpZ2luX2Vj"),
        ("https://user:pa55word@host/", "pa55word"),
    ],
)
def test_secrets_are_still_masked(text: str, secret: str) -> None:
    assert secret not in redact_mod.redact(text)
