"""The errno edge: the one place where ebsfs errors become FUSE errno values.

Every request handler is wrapped by :func:`fuse_errors` (pyfuse3 ends its main loop on any
other exception than ``FUSEError``). See docs/architecture.md and docs/errors.md.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from ebsfs.core.errors import AccessDeniedError, EbsfsError
from ebsfs.core.exgroups import leaves

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Answers by errno name, for ``ebsfs stats``.
ERRNO_COUNTS: Counter[str] = Counter()

#: A local disk (the spool's) out of room: what the application is told, whatever step of
#: the request met it, not a bug.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def _no_room(exc: BaseException) -> OSError | None:
    for leaf in leaves(exc):
        if isinstance(leaf, OSError) and leaf.errno in _NO_ROOM:
            return leaf
    return None


def errno_of(exc: BaseException) -> int:
    """The errno a request answers when ``exc`` ends it."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    for leaf in leaves(exc):
        if isinstance(leaf, pyfuse3.FUSEError):
            return leaf.errno
        if isinstance(leaf, EbsfsError):
            return leaf.errno
    full = _no_room(exc)
    return full.errno if full is not None and full.errno else errno.EIO


def fuse_errors(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Wrap a request handler so that it raises nothing but ``pyfuse3.FUSEError``."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError as exc:
            # "No such attribute" answers the probes of ls, cp and getfattr: not an error.
            if exc.errno != errno.ENODATA:
                ERRNO_COUNTS[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
            raise
        except (Exception, BaseExceptionGroup) as exc:
            found = leaves(exc)
            full = _no_room(exc)
            if full is not None and not any(isinstance(leaf, EbsfsError) for leaf in found):
                log.error("%s: no room on a local disk: %s", handler.__name__, full)
            elif not any(isinstance(leaf, EbsfsError | pyfuse3.FUSEError) for leaf in found):
                log.error("%s failed unexpectedly", handler.__name__, exc_info=exc)
            elif any(isinstance(leaf, AccessDeniedError) for leaf in found):
                log.error("%s: access denied: %s", handler.__name__, exc)
            code = errno_of(exc)
            ERRNO_COUNTS[errno.errorcode.get(code, str(code))] += 1
            raise pyfuse3.FUSEError(code) from None

    return wrapper


def fail(code: int) -> pyfuse3.FUSEError:
    """A FUSE error to raise for ``code``: ``raise fail(errno.EROFS)``."""
    return pyfuse3.FUSEError(code)


__all__ = ["ERRNO_COUNTS", "errno_of", "fail", "fuse_errors"]
