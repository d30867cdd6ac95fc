"""Exception groups from trio nurseries, reduced to the one error a caller expects."""

from __future__ import annotations

from ebsfs.core.errors import EbsfsError


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside ``exc`` (``[exc]`` itself when it is no group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def first_error(exc: BaseException) -> BaseException:
    """The first ebsfs error inside ``exc``, else its first leaf."""
    found = leaves(exc)
    for leaf in found:
        if isinstance(leaf, EbsfsError):
            return leaf
    return found[0]
