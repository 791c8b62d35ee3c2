"""A *simulated* continuous-batching inference server (vLLM-like), event-driven on the loop clock.

The model: a request waits in a FIFO queue until a slot (``max_running``) and KV-cache room for
``prompt + completion`` tokens are free; it then goes through one shared prefill lane at
``prefill_tokens_per_s`` (time to first token) and joins the decode set.  One decode step advances
every sequence in the decode set by one token and costs ``base_step_s + per_seq_s * n``.

While the decode set does not change, every sequence advances at the same rate, so the next
completion time is computed analytically and a single ``loop.call_at`` timer is armed for it.
The plan is redone only on an arrival, a prefill finishing, a completion or a cancellation --
never per decode step -- so a 30-minute simulated run costs a few thousand events.

Deliberate simplifications (documented in docs/simulator.md): KV is reserved for the whole
completion at admission (no preemption/swapping), prefill does not slow decode steps down, and
the length of each completion is known up front (it was drawn by the simulator).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from flashevolve.backends.base import BackendLoad, LLMError
from flashevolve.backends.sim.profiles import EngineProfile

#: Slack (in decode steps) when deciding that a sequence has reached its last token.
_EPS_STEPS = 1e-6


@dataclass(slots=True)
class Timing:
    """When a simulated request was queued, started and finished (loop-clock seconds)."""

    submitted: float
    admitted: float
    first_token: float
    finished: float

    @property
    def latency_s(self) -> float:
        return self.finished - self.submitted

    @property
    def queued_s(self) -> float:
        return self.admitted - self.submitted


@dataclass(slots=True, eq=False)
class _Seq:
    id: int
    prompt_tokens: int
    completion_tokens: int
    future: asyncio.Future[Timing]
    submitted: float
    state: str = "queued"  # queued -> prefill -> decode -> done | cancelled
    admitted: float = 0.0
    first_token: float = 0.0
    start_step: float = 0.0
    target_step: float = 0.0
    prefill_handle: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ServingEngine:
    """One simulated continuous-batching server bound to the running asyncio loop."""

    def __init__(self, profile: EngineProfile) -> None:
        self.profile = profile
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count()
        self._queue: deque[_Seq] = deque()
        self._prefilling: dict[int, _Seq] = {}
        self._decoding: dict[int, _Seq] = {}
        self._heap: list[tuple[float, int]] = []  # (target_step, id); stale entries skipped
        self._steps = 0.0  # decode steps taken so far by the decode set (fractional)
        self._t_last: float | None = None
        self._t_first: float | None = None
        self._prefill_free_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_target = 0.0
        self.kv_used = 0
        # counters
        self.completed_requests = 0
        self.cancelled_requests = 0
        self.completed_tokens = 0
        self.wasted_tokens = 0
        self.prompt_tokens = 0
        self.decode_tokens = 0.0
        self.busy_s = 0.0
        self.running_time = 0.0  # integral of admitted sequences over time (mean concurrency)
        self.waiting_time = 0.0  # integral of queued requests over time (mean queue length)

    # -- public ---------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._prefilling) + len(self._decoding)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def load(self) -> BackendLoad:
        return BackendLoad(
            running=self.running,
            waiting=self.queued,
            kv_usage=self.kv_used / self.profile.kv_capacity_tokens,
        )

    async def generate(
        self, prompt_tokens: int, completion_tokens: int, partial: dict[str, int] | None = None
    ) -> Timing:
        """Serve one request; returns its timing.  Cancelling the caller aborts the request and
        writes the tokens it had generated into ``partial["completion_tokens"]``."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a ServingEngine serves one event loop; make one per loop")
        prompt_tokens = max(1, int(prompt_tokens))
        completion_tokens = max(1, int(completion_tokens))
        if prompt_tokens + completion_tokens > self.profile.kv_capacity_tokens:
            raise LLMError(
                f"request needs {prompt_tokens + completion_tokens} KV tokens but the simulated "
                f"server holds {self.profile.kv_capacity_tokens}; shorten the prompt or max_tokens",
                status=400,
            )
        now = loop.time()
        self._advance(now)
        seq = _Seq(next(self._ids), prompt_tokens, completion_tokens, loop.create_future(), now)
        self._queue.append(seq)
        self._admit(now)
        try:
            return await seq.future
        except asyncio.CancelledError:
            made = self._cancel(seq)
            if partial is not None:
                partial["completion_tokens"] = made
            raise

    def stats(self) -> dict[str, Any]:
        """A snapshot.  Read-only (it projects the integrals to now without committing them), so
        another thread -- a test, a notebook -- may call it while the server loop runs."""
        now = self._now()
        decode_tokens, busy_s, running_time = self.decode_tokens, self.busy_s, self.running_time
        waiting_time = self.waiting_time
        if self._t_last is not None and now > self._t_last:
            dt = now - self._t_last
            n = len(self._decoding)
            if n:
                decode_tokens += dt / self.profile.step_time(n) * n
            if self.running:
                busy_s += dt
                running_time += dt * self.running
            waiting_time += dt * len(self._queue)
        elapsed = 0.0 if self._t_first is None else now - self._t_first
        attainable = self.profile.attainable_tokens_per_s
        return {
            "profile": self.profile.name,
            "now": now,
            "running": len(self._decoding),
            "prefilling": len(self._prefilling),
            "queued": len(self._queue),
            "kv_used_tokens": self.kv_used,
            "completed_requests": self.completed_requests,
            "cancelled_requests": self.cancelled_requests,
            "prompt_tokens": self.prompt_tokens,
            "completed_tokens": self.completed_tokens,
            "wasted_tokens": self.wasted_tokens,
            "decode_tokens": round(decode_tokens),
            "busy_s": busy_s,
            "elapsed_s": elapsed,
            "mean_concurrency": running_time / elapsed if elapsed > 0 else 0.0,
            # Mean requests waiting for a slot or KV room.  Divided by mean_concurrency it is
            # (Little's law) the time a request queues per second it is served: where it leaves
            # zero, the server is full.
            "mean_waiting": waiting_time / elapsed if elapsed > 0 else 0.0,
            "attainable_tokens_per_s": attainable,
            "utilization": decode_tokens / (elapsed * attainable) if elapsed > 0 else 0.0,
        }

    # -- the event machinery --------------------------------------------------------------------

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _advance(self, now: float) -> None:
        """Move the decode progress counter and the time integrals up to ``now``."""
        if self._t_last is None:
            self._t_first = self._t_last = now
            return
        dt = now - self._t_last
        if dt <= 0:
            return
        n = len(self._decoding)
        if n:
            steps = dt / self.profile.step_time(n)
            self._steps += steps
            self.decode_tokens += steps * n
        if self.running:
            self.busy_s += dt
            self.running_time += dt * self.running
        self.waiting_time += dt * len(self._queue)
        self._t_last = now

    def _admit(self, now: float) -> None:
        """Admit queued requests in FIFO order while a slot and KV room are free."""
        cap = self.profile.kv_capacity_tokens
        assert self._loop is not None
        while self._queue:
            head = self._queue[0]
            if self.running >= self.profile.max_running or self.kv_used + head.kv_tokens > cap:
                break  # head-of-line blocking, as in a FIFO scheduler
            self._queue.popleft()
            head.state = "prefill"
            head.admitted = now
            self.kv_used += head.kv_tokens
            self.prompt_tokens += head.prompt_tokens
            start = max(now, self._prefill_free_at)
            done = start + head.prompt_tokens / self.profile.prefill_tokens_per_s
            self._prefill_free_at = done
            self._prefilling[head.id] = head
            head.prefill_handle = self._loop.call_at(done, self._prefill_done, head)

    def _prefill_done(self, seq: _Seq) -> None:
        now = self._now()
        self._advance(now)
        self._prefilling.pop(seq.id, None)
        seq.prefill_handle = None
        seq.state = "decode"
        seq.first_token = now
        seq.start_step = self._steps
        seq.target_step = self._steps + seq.completion_tokens
        self._decoding[seq.id] = seq
        heapq.heappush(self._heap, (seq.target_step, seq.id))
        self._replan(now)

    def _replan(self, now: float) -> None:
        """Arm one timer for the earliest completion in the current decode set."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._heap and self._heap[0][1] not in self._decoding:
            heapq.heappop(self._heap)
        if not self._heap:
            return
        target = self._heap[0][0]
        wait = max(0.0, target - self._steps) * self.profile.step_time(len(self._decoding))
        assert self._loop is not None
        self._timer_target = target
        self._timer = self._loop.call_at(now + wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        self._advance(now)
        # The timer was armed for this target: snap to it so float rounding can never make the
        # loop spin without progress.
        self._steps = max(self._steps, self._timer_target)
        while self._heap and self._heap[0][0] <= self._steps + _EPS_STEPS:
            _, sid = heapq.heappop(self._heap)
            seq = self._decoding.pop(sid, None)
            if seq is None:
                continue
            seq.state = "done"
            self.kv_used -= seq.kv_tokens
            self.completed_requests += 1
            self.completed_tokens += seq.completion_tokens
            if not seq.future.done():
                seq.future.set_result(Timing(seq.submitted, seq.admitted, seq.first_token, now))
        self._admit(now)
        self._replan(now)

    def _cancel(self, seq: _Seq) -> int:
        """The caller went away: drop the sequence, free its KV, count the work thrown away
        (returned: tokens it had generated)."""
        now = self._now()
        self._advance(now)
        made = 0
        if seq.state == "queued":
            self._queue.remove(seq)
        elif seq.state == "prefill":
            if seq.prefill_handle is not None:
                seq.prefill_handle.cancel()
            self._prefilling.pop(seq.id, None)
            self.kv_used -= seq.kv_tokens
        elif seq.state == "decode":
            self._decoding.pop(seq.id, None)
            self.kv_used -= seq.kv_tokens
            made = max(0, min(seq.completion_tokens, int(self._steps - seq.start_step)))
            self.wasted_tokens += made
        else:  # finished just as the caller was cancelled: nothing to free
            return 0
        seq.state = "cancelled"
        self.cancelled_requests += 1
        self._admit(now)
        self._replan(now)
        return made
