"""The CPU pool: jobs run off the loop, and a batch never leaves a job running behind it."""

from __future__ import annotations

import asyncio
import time

import pytest

from dicomweb import cpu


def test_a_failed_batch_raises_only_once_every_job_has_ended() -> None:
    finished: list[str] = []

    def slow() -> str:
        time.sleep(0.2)
        finished.append("slow")
        return "slow"

    def failing() -> str:
        raise ValueError("bad frame")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="bad frame"):
            await cpu.run_all([(failing, ()), (slow, ())])
        assert finished == ["slow"], "the slow job ended before the failure was raised"
        assert await cpu.run_all([(max, (1, 2)), (min, (1, 2))]) == [2, 1]

    asyncio.run(scenario())
