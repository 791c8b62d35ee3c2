"""The priority gate of OpenAI-compatible clients: order, cancellation, and over real HTTP."""

from __future__ import annotations

import asyncio

import pytest

from flashevolve.backends.base import ChatRequest
from flashevolve.backends.gate import PriorityGate
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.server import ScriptedResponder, serve_in_thread


async def settle(cond, rounds: int = 100) -> None:
    """Let other tasks run until ``cond()`` holds (event-loop turns, not wall-clock time)."""
    for _ in range(rounds):
        if cond():
            return
        await asyncio.sleep(0)
    assert cond()


async def hold(gate: PriorityGate, release: asyncio.Event) -> None:
    async with gate.slot():
        await release.wait()


async def enter(gate: PriorityGate, name: str, priority: int, log: list[str]) -> None:
    async with gate.slot(priority):
        log.append(name)


def test_waiters_enter_by_priority_then_arrival():
    async def main() -> list[str]:
        gate = PriorityGate(1)
        order: list[str] = []
        release = asyncio.Event()
        first = asyncio.create_task(hold(gate, release))
        await settle(lambda: gate.holders == 1)
        waiting = (("rollout", 0), ("validate-a", -3), ("propose", -1), ("validate-b", -3))
        tasks = [asyncio.create_task(enter(gate, name, p, order)) for name, p in waiting]
        await settle(lambda: gate.waiting == 4)
        release.set()
        await asyncio.gather(first, *tasks)
        assert gate.holders == 0
        return order

    assert asyncio.run(main()) == ["validate-a", "validate-b", "propose", "rollout"]


def test_a_cancelled_waiter_gives_up_its_place_and_leaks_no_slot():
    async def main() -> None:
        gate = PriorityGate(1)
        release = asyncio.Event()
        got: list[str] = []
        first = asyncio.create_task(hold(gate, release))
        await settle(lambda: gate.holders == 1)
        doomed = asyncio.create_task(enter(gate, "doomed", -9, got))
        later = asyncio.create_task(enter(gate, "later", 0, got))
        await settle(lambda: gate.waiting == 2)
        doomed.cancel()
        release.set()
        await asyncio.gather(first, later)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert got == ["later"] and gate.holders == 0
        # a waiter cancelled right after it was let in passes its slot on
        async with gate.slot():
            woken = asyncio.create_task(enter(gate, "woken", 0, got))
            after = asyncio.create_task(enter(gate, "after", 1, got))
            await settle(lambda: gate.waiting == 2)
        woken.cancel()  # its future is already set: the slot must move on to "after"
        await asyncio.gather(after)
        with pytest.raises(asyncio.CancelledError):
            await woken
        assert got == ["later", "after"] and gate.holders == 0

    asyncio.run(main())


def test_gate_needs_a_positive_limit():
    with pytest.raises(ValueError):
        PriorityGate(0)


@pytest.mark.parametrize(
    "queue, expected",
    [
        ("priority", ["first", "validate", "propose", "rollout"]),
        ("fifo", ["first", "rollout", "validate", "propose"]),
    ],
)
def test_a_queueing_client_sends_lower_priority_numbers_first_over_http(queue, expected):
    """max_concurrency=1 against the scripted server: the first request holds the only slot,
    three more queue, and they reach the server in priority order (or arrival order, when the
    client is told to ignore priorities)."""
    seen: list[str] = []

    def script(request: ChatRequest) -> str:
        seen.append(request.stage)
        return "ok"

    async def main(base_url: str) -> None:
        llm = OpenAICompatLLM(base_url, "scripted", max_concurrency=1, queue=queue)
        _, gate = llm._loop_state()
        first = asyncio.create_task(llm.complete(ChatRequest(MSGS, stage="first")))
        await settle(lambda: gate.holders == 1)
        queued = [
            asyncio.create_task(llm.complete(ChatRequest(MSGS, stage=stage, priority=p)))
            for stage, p in (("rollout", 0), ("validate", -3), ("propose", -1))
        ]
        await settle(lambda: gate.waiting == 3)
        await asyncio.gather(first, *queued)
        await llm.aclose()

    with serve_in_thread(ScriptedResponder(script, latency=0.05)) as base_url:
        asyncio.run(main(base_url))
    assert seen == expected


def test_an_unknown_client_queue_is_refused():
    with pytest.raises(ValueError, match="fifo"):
        OpenAICompatLLM("http://127.0.0.1:9/v1", "m", queue="lifo")


MSGS = [{"role": "user", "content": "hello"}]
