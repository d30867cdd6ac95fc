"""A call's outcome handed from its worker thread (``ebsfs.aws.pending``)."""

from __future__ import annotations

import outcome
import trio

from ebsfs.aws.pending import Pending


def test_an_outcome_already_in_is_returned_even_past_the_deadline() -> None:
    # The runner's bound passed just as the worker delivered; it loops back to take the
    # result inside a scope whose deadline is gone. The wait used to check for cancellation
    # first and raise Cancelled every time: the runner spun forever instead of returning.
    async def main() -> None:
        call = Pending()
        call.started = True
        call.deliver(outcome.Value("block"))
        got = None
        with trio.move_on_at(trio.current_time() - 1):
            got = await call.wait()
        assert got == "block"

    trio.run(main)
