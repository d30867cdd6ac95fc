"""docs/errors.md draws the exception tree: every class of ebsfs.core.errors is in it, with
its parent, its errno and its exit code as the code has them."""

import errno
import re
from pathlib import Path

from ebsfs.core import errors

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
ROW = re.compile(r"^([│ ]*(?:[├└]── )?)(\w+)\s+(E[A-Z]+)(?:\s+exit (\d+))?", re.M)


def _drawn() -> dict[str, tuple[str, str, str | None]]:
    text = DOC.read_text()
    start = text.index("```\nEbsfsError")
    block = text[start : text.index("```", start + 3)]
    rows: dict[str, tuple[str, str, str | None]] = {}
    stack: list[tuple[int, str]] = []
    for m in ROW.finditer(block.split("\n", 1)[1]):
        depth = len(m.group(1))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        rows[m.group(2)] = (stack[-1][1] if stack else "", m.group(3), m.group(4))
        stack.append((depth, m.group(2)))
    return rows


def test_every_error_class_is_drawn_as_the_code_has_it() -> None:
    drawn = _drawn()
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.EbsfsError)
    }
    assert set(drawn) == set(classes)
    for name, cls in classes.items():
        parent, errno_name, exit_code = drawn[name]
        if cls is not errors.EbsfsError:
            assert cls.__bases__[0].__name__ == parent, name
        assert errno.errorcode[cls.errno] == errno_name, name
        if exit_code is not None:
            assert cls.exit_code == int(exit_code), name
