"""The one retry policy of ebsfs's AWS calls: what is retried, how often, for how long, with
what back-off; on top of botocore's own bounded retries (docs/errors.md, "How AWS errors are
classified").

What is retried follows the error's kind (``ebsfs.core.errors.classify``) and nothing else.
The numbers differ by path (``READS``, ``PUTS``, ``CONTROL``; the read and write tunings make
theirs); the rules do not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import trio

from ebsfs.aws.runner import Health
from ebsfs.core.errors import (
    GONE,
    RESEND,
    RETRY,
    ApiError,
    ChecksumError,
    EbsfsError,
    EndpointDownError,
    InvalidTokenError,
    throttling,
)

__all__ = ["CONTROL", "Again", "Attempts", "RetryPolicy", "retryable", "retrying"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def retryable(exc: EbsfsError) -> bool:
    """Whether the same call made again may succeed: throttling, quotas, 5xx, connection
    failures, a body cut short (kind ``retry``) and a put AWS asks to send again (``resend``);
    never while the endpoint is known down (the call would fail at once again)."""
    return exc.kind in (RETRY, RESEND) and not isinstance(exc, EndpointDownError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long one call is retried."""

    #: Failed attempts (retryable or checksum) after which the error is final.
    attempts: float = 6
    #: First pause; it doubles at each retry, up to ``max_backoff``.
    backoff: float = 0.2
    max_backoff: float = 5.0
    #: No retry starts later than this after the first attempt.
    patience: float = math.inf
    #: Checksum mismatches after which the error is final (a read fetches the block again).
    checksum_attempts: float = math.inf
    #: Attempts refused with INVALID_BLOCK_TOKEN/INVALID_PAGE_TOKEN after which the error is
    #: final; before that the caller renews the token (``Again.renew``). 0: never renewed.
    token_attempts: int = 0
    #: A 404 is retried while the snapshot is younger than this (seconds since StartSnapshot,
    #: or since its completion for a read: AWS's lag, ebs-direct-api.md §4.4, §10).
    not_found_grace: float = 0.0
    #: Pauses between those 404s grow linearly by this step; 0: the exponential back-off.
    not_found_step: float = 0.0


#: StartSnapshot, CompleteSnapshot, DescribeSnapshots: a few attempts.
CONTROL = RetryPolicy(attempts=6)


@dataclass(frozen=True)
class Again:
    """Try again after ``pause`` seconds; ``renew``: with a fresh token first."""

    pause: float
    renew: bool = False


class Attempts:
    """The retries of one call under ``policy``: ``again(exc)`` says whether and when.

    ``health`` (the runner's clock) stops retries once the endpoint has not answered for
    ``io_timeout`` or is known down; ``age`` gives the snapshot's age for the 404 grace;
    ``progress`` when a call like this one last went through (its lane's, ``Concurrency``;
    default: any call of the mount), which throttling is bounded from.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        health: Health | None = None,
        age: Callable[[], float] | None = None,
        progress: Callable[[], float] | None = None,
    ) -> None:
        self.policy = policy
        self.health = health
        self.age = age
        self.progress = progress
        self.started = trio.current_time()
        self.deadline = self.started + policy.patience
        self.failures = 0
        self.checksums = 0
        self.tokens = 0
        self.not_found = 0
        self._pause = policy.backoff

    def bound(self) -> float:
        """When a call of these attempts, made or waiting for its turn now, gives up: the
        patience, or later while calls like it go through (``progress``): under a quota it
        only waits behind them."""
        io_timeout = self.health.io_timeout if self.health is not None else None
        if self.progress is None or io_timeout is None:
            return self.deadline
        return max(self.deadline, self.progress() + 4 * io_timeout)

    def _backoff(self) -> float:
        pause = self._pause
        self._pause = min(self._pause * 2, self.policy.max_backoff)
        return min(pause, self.policy.max_backoff)

    def again(self, exc: EbsfsError) -> Again | None:
        """The next attempt after ``exc``, or None: ``exc`` is final."""
        p = self.policy
        if isinstance(exc, InvalidTokenError):
            self.tokens += 1
            return Again(0.0, renew=True) if self.tokens < p.token_attempts else None
        if exc.kind == GONE:
            self.not_found += 1
            if self.age is None or self.age() >= p.not_found_grace:
                return None
            step = p.not_found_step
            return Again(step * self.not_found if step else self._backoff())
        if isinstance(exc, ChecksumError):
            self.checksums += 1
            if self.checksums >= p.checksum_attempts:
                return None
        elif not retryable(exc):
            return None
        io_timeout = self.health.io_timeout if self.health is not None else None
        deadline = self.deadline
        if io_timeout is not None and isinstance(exc, ApiError) and throttling(exc.code):
            # Throttling alone never fails a call: waited out (the runner's window shrinks
            # meanwhile), bounded by time as a read is, not by a number of attempts: while
            # calls like it go through (its lane's), this one only waits its turn (queued
            # behind the others of a low quota); throttling that lets none of them through
            # for 4 x io_timeout fails it.
            if self.progress is not None:
                # Not bounded by the patience either: a read's is as long (4 x io_timeout)
                # from its start, queueing included.
                deadline = max(self.started, self.progress()) + 4 * io_timeout
            else:
                since = self.started
                if self.health is not None:
                    since = max(since, self.health.last_done)
                deadline = min(deadline, since + 4 * io_timeout)
        else:
            self.failures += 1
            if self.failures >= p.attempts:
                return None
        pause = self._backoff()
        now = trio.current_time()
        if self.health is not None and io_timeout is not None:
            # A busy endpoint is retried; a silent one is not: give up once nothing of the
            # mount was answered for io_timeout, or the endpoint is known down.
            # Asked, not started: the pause is no call waiting, and the retry has a whole
            # bound after an answer (else it began at its deadline and marked the endpoint,
            # answering every call, down).
            left = self.health.deadline(start=False) - now
            if self.health.down or left <= 0:
                return None
            pause = min(pause, left)
        if now + pause >= deadline:
            return None
        return Again(pause)


async def retrying(
    call: Callable[..., Awaitable[T]],
    fn: Callable[..., T],
    *args: Any,
    attempts: int | None = None,
    policy: RetryPolicy = CONTROL,
) -> T:
    """``await call(fn, *args)`` (``call``: the runner's ``Calls.run``), again while
    ``policy`` allows (idempotent calls only). ``attempts`` overrides the policy's."""
    if attempts is not None:
        policy = replace(policy, attempts=attempts)
    tries = Attempts(policy)
    while True:
        try:
            return await call(fn, *args)
        except EbsfsError as exc:
            again = tries.again(exc)
            if again is None:
                raise
            log.info("%s: retrying after: %s", getattr(fn, "__name__", "call"), exc)
            await trio.sleep(again.pause)
