"""One call's outcome, handed from its worker thread to the trio task waiting for it
(``ebsfs.aws.runner``)."""

from __future__ import annotations

from typing import Any

import trio


class Pending:
    """The outcome of one call running in a worker thread, waited for by at most one task.

    A wait cancelled (the bound, a cancelled caller) leaves the call running: its outcome is
    kept for a later ``wait`` (a call still hearing answers), or dropped once ``abandon``ed;
    the thread finishes on its own within botocore's timeouts either way."""

    __slots__ = ("_result", "_task", "abandoned", "started")

    def __init__(self) -> None:
        self.started = False
        self.abandoned = False
        self._task: trio.lowlevel.Task | None = None
        self._result: Any = None

    @property
    def done(self) -> bool:
        return self._result is not None

    def deliver(self, result: Any) -> None:
        if self.abandoned:
            return
        if self._task is not None:
            task, self._task = self._task, None
            trio.lowlevel.reschedule(task, result)
        else:
            self._result = result

    def abandon(self) -> None:
        self.abandoned = True
        self._result = None

    async def wait(self) -> Any:
        if self._result is not None:
            # Shielded: the outcome is here, whatever the caller's deadline says. A checkpoint
            # that could be cancelled handed the runner, whose bound had passed as the result
            # came in, Cancelled again and again: a busy loop instead of the result.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return self._result.unwrap()
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            # A cancelled or timed-out wait must not wait for a stuck socket.
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)
