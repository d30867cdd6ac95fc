"""The one retry policy (ebsfs.aws.retry) on a fake clock: what is retried follows the kind
alone, for reads, puts and sealing alike; how often, how long and with what back-off."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from ebsfs.aws.retry import CONTROL, Attempts, RetryPolicy, retryable, retrying
from ebsfs.aws.runner import Health
from ebsfs.core import errors
from ebsfs.read.remote import RemoteTuning
from ebsfs.write.sink import PutTuning

THROTTLED = errors.ApiError("slow", "RequestThrottledException", "ACCOUNT_THROTTLED", 400)

#: (error, retried by every path) — the kind decides, nothing else.
CASES: list[tuple[errors.EbsfsError, bool]] = [
    (THROTTLED, True),
    (errors.ApiError("x", "InternalServerException", "", 500), True),
    (errors.ApiError("x", "ValidationException", "WRITE_REQUEST_TIMEOUT", 400), True),
    (errors.ApiError("x", "IncompleteBody"), True),
    (errors.BackendUnavailableError("connection refused"), True),
    (errors.EndpointDownError("known down"), False),
    (errors.AccessDeniedError("no"), False),
    (errors.DependencyMissingError("kms", "ResourceNotFoundException",
                                   "DEPENDENCY_RESOURCE_NOT_FOUND", 404), False),
    (errors.InvalidValueError("bad"), False),
    (errors.ApiError("x", "ConflictException", "", 409), False),
]

POLICIES = {
    "read": RemoteTuning().policy(),
    "put": PutTuning().policy(),
    "control": CONTROL,
}


def on_fake_clock(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("path", sorted(POLICIES))
@pytest.mark.parametrize(("exc", "retried"), CASES, ids=lambda c: getattr(c, "code", repr(c)))
def test_what_is_retried_is_the_kind_on_every_path(
    path: str, exc: errors.EbsfsError, retried: bool
) -> None:
    async def main() -> None:
        assert retryable(exc) is retried
        assert (Attempts(POLICIES[path]).again(exc) is not None) is retried

    on_fake_clock(main)


def test_the_write_path_has_no_retry_loop_of_its_own() -> None:
    from ebsfs.write import seal, sink, snapcalls

    assert seal.retrying is retrying and snapcalls.retrying is retrying
    assert not hasattr(sink, "retrying") and not hasattr(sink, "transient")


@pytest.mark.parametrize(("policy", "attempts"), [(PutTuning().policy(), 8), (CONTROL, 6)])
def test_attempts_are_bounded_and_back_off_exponentially(
    policy: RetryPolicy, attempts: int
) -> None:
    async def main() -> None:
        tries = Attempts(policy)
        pauses = []
        while (again := tries.again(THROTTLED)) is not None:
            pauses.append(again.pause)
        assert len(pauses) == attempts - 1
        assert pauses[:3] == [0.2, 0.4, 0.8]
        assert max(pauses) == min(5.0, 0.2 * 2 ** (attempts - 2))

    on_fake_clock(main)


def test_retrying_gives_up_after_the_policys_attempts() -> None:
    made: list[float] = []

    def fn() -> None:
        raise THROTTLED

    async def call(f: Callable[[], None]) -> None:
        made.append(trio.current_time())
        f()

    async def main() -> None:
        with pytest.raises(errors.ApiError):
            await retrying(call, fn)
        with pytest.raises(errors.ApiError):
            await retrying(call, fn, attempts=2)

    on_fake_clock(main)
    assert len(made) == 6 + 2


@pytest.mark.parametrize("policy", [RemoteTuning(io_timeout=10.0).policy(), PutTuning().policy()],
                         ids=["read", "put"])
def test_throttling_alone_is_waited_out_for_four_io_timeouts_not_a_count(
    policy: RetryPolicy,
) -> None:
    async def main() -> None:
        health = Health(io_timeout=10.0)
        tries = Attempts(policy, health=health)
        start = trio.current_time()
        retries = 0
        while (again := tries.again(THROTTLED)) is not None:
            await trio.sleep(again.pause)
            retries += 1
            health.answered()  # throttling is an answer: the endpoint is busy, not down
        assert 4 * 10.0 - 5.0 <= trio.current_time() - start <= 4 * 10.0
        assert retries > 8  # bounded by time, not by a number of attempts
        # Anything else still counts: a put gives up after its attempts.
        other = Attempts(PutTuning().policy(), health=health)
        fails = errors.ApiError("x", "InternalServerException", "", 500)
        assert sum(other.again(fails) is not None for _ in range(20)) == 7

    on_fake_clock(main)


def test_throttling_is_bounded_from_the_last_call_of_its_kind_that_went_through() -> None:
    # A put queued behind others under a low quota meets throttling long after it began:
    # while puts of its lane go through it waits its turn (on main it failed 4 x io_timeout
    # after it began, and the fsync with it); once none has for 4 x io_timeout, it fails,
    # whatever other calls of the mount (reads) do meanwhile.
    async def main() -> None:
        health = Health(io_timeout=1.0)
        lane_done = [trio.current_time()]
        tries = Attempts(PutTuning().policy(), health=health, progress=lambda: lane_done[0])
        for _ in range(30):  # 30 s of throttling, the lane's other puts going through
            await trio.sleep(1.0)
            lane_done[0] = trio.current_time()
            health.answered()
            health.last_done = trio.current_time()
            assert tries.again(THROTTLED) is not None
        start = trio.current_time()
        while (again := tries.again(THROTTLED)) is not None:  # now none of them does
            await trio.sleep(again.pause)
            health.answered()
            health.last_done = trio.current_time()  # reads of the mount still do
        assert 4 * 1.0 - 1.0 <= trio.current_time() - start <= 4 * 1.0

    on_fake_clock(main)


def test_no_retry_once_the_endpoint_is_silent_for_io_timeout_or_known_down() -> None:
    async def main() -> None:
        health = Health(io_timeout=2.0)
        tries = Attempts(PutTuning().policy(), health=health)
        health.answered()
        health.deadline()  # a call starts (Calls.run): the clock runs from now
        assert tries.again(errors.BackendUnavailableError("refused")) is not None
        await trio.sleep(2.0)  # nothing answered since
        assert tries.again(errors.BackendUnavailableError("refused")) is None
        health.answered()
        assert Attempts(CONTROL, health=health).again(THROTTLED) is not None
        health.down_since = trio.current_time()
        assert Attempts(CONTROL, health=health).again(THROTTLED) is None

    on_fake_clock(main)


def test_404s_are_waited_out_for_the_grace_only() -> None:
    gone = errors.NotFoundError("SNAPSHOT_NOT_FOUND")

    async def main() -> None:
        # A put: 404s after StartSnapshot, linear steps, until the grace.
        started = trio.current_time()
        tries = Attempts(
            PutTuning(not_found_grace=10.0).policy(),
            age=lambda: trio.current_time() - started,
        )
        pauses = []
        while (again := tries.again(gone)) is not None:
            pauses.append(again.pause)
            await trio.sleep(again.pause)
        assert pauses == [2.0, 4.0, 6.0]
        # A read: counted from the completion, exponential back-off.
        read = Attempts(RemoteTuning(not_found_grace=180.0).policy(), age=lambda: 179.0)
        assert read.again(gone) is not None
        assert Attempts(RemoteTuning().policy(), age=lambda: 181.0).again(gone) is None
        # No grace where no age is known (sealing): final at once.
        assert Attempts(CONTROL).again(gone) is None

    on_fake_clock(main)


def test_checksum_and_token_special_cases() -> None:
    bad_sum = errors.ChecksumError("mismatch")
    token = errors.InvalidTokenError("expired", "ValidationException", "INVALID_BLOCK_TOKEN", 400)

    async def main() -> None:
        read = Attempts(RemoteTuning(checksum_attempts=3).policy())
        assert [read.again(bad_sum) is not None for _ in range(3)] == [True, True, False]
        renewals = [read.again(token) for _ in range(3)]
        assert [a is not None and a.renew and a.pause == 0 for a in renewals] == [
            True, True, False]
        put = Attempts(PutTuning().policy())
        assert put.again(token) is None  # a put has no token to renew
        assert put.again(bad_sum) is not None  # the same bytes sent again

    on_fake_clock(main)


def test_the_read_policy_is_the_tunings() -> None:
    p = RemoteTuning(io_timeout=2.0, backoff=1.0).policy()
    assert (p.backoff, p.max_backoff, p.patience, p.attempts) == (0.5, 0.5, 8.0, math.inf)


@pytest.mark.parametrize("answer", [
    THROTTLED, errors.ApiError("x", "ValidationException", "WRITE_REQUEST_TIMEOUT", 400)],
    ids=["throttled", "write-request-timeout"])
def test_a_retry_after_an_answer_has_a_whole_bound_and_the_endpoint_stays_up(
    answer: errors.ApiError,
) -> None:
    # The pause before a retry was cut to what was left of the io clock, and asking for it
    # started the clock with no call waiting: the retry began at its deadline, failed with "no
    # answer within the bound", and the endpoint, answering every call, was marked down
    # (every other read and put of the mount then failed at once with EIO).
    from ebsfs.aws.runner import Calls

    def refused() -> None:
        raise answer

    async def main() -> None:
        calls = Calls(trio.CapacityLimiter(2), io_timeout=0.5)
        tries = Attempts(PutTuning().policy(), health=calls.health)
        while True:
            with trio.fail_after(60):  # a hang guard only
                try:
                    await calls.run(refused)
                except errors.ApiError as exc:
                    again = tries.again(exc)
            if again is None:
                break
            await trio.sleep(again.pause)
        assert calls.health.counters["endpoint_down"] == 0 and not calls.health.down

    trio.run(main)
