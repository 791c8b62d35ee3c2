"""A *simulated* continuous-batching inference server (vLLM v1-like), event-driven on the loop clock.

The model, step by step: a request waits in a FIFO queue until a slot (``max_running``) and
KV-cache room for ``prompt + completion`` tokens are free.  Admitted requests are prefilled in
arrival order, in chunks: each engine step carries one token for every decoding sequence plus
as many prompt tokens as the rest of the step's token budget (``max_batched_tokens``) allows, and
costs ``base_step_s + per_seq_s * decoding + prefill_tokens / prefill_tokens_per_s`` -- so
prefill takes its share of each step and slows decoding down, as in vLLM's chunked prefill.  The
step that processes the last prompt chunk of a request also produces its first token.

Nothing loops per token.  While the batch does not change, consecutive steps are identical, so
the engine plans an *epoch* -- the steps up to the next decode completion or prefill completion
-- and arms one ``loop.call_at`` timer for its end.  Composition changes happen at step
boundaries, as in a real engine: a request that arrives (or is cancelled) in the middle of an
epoch splits it -- the whole steps done so far are committed, the step in progress finishes with
the batch it started with, and the new batch starts at its end.

Cancelling the task awaiting a request removes it at once, frees its KV and counts the tokens it
had generated as ``wasted_tokens``.  Deliberate simplifications (docs/simulator.md): KV is
reserved for the whole completion at admission (no preemption/swapping), the length of each
completion is known up front (the simulator drew it), and one per-sequence cost stands for
attention over any context length.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flashevolve.backends.base import BackendLoad, LLMError
from flashevolve.backends.sim.profiles import EngineProfile

#: Times closer than this (seconds) are the same instant.
_EPS_S = 1e-9


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
    prefill_left: int = 0  # prompt tokens not processed yet
    step_alloc: int = 0  # prompt tokens the step in progress gives it (split epochs only)
    start_step: int = 0  # engine step that produced its first token
    target_step: int = 0  # engine step that produces its last token

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class _Epoch:
    """Identical steps from ``t0`` until the next completion: ``steps - 1`` full steps of
    ``full_s`` each, then a last one of ``last_s`` (it may carry fewer prefill tokens).
    ``split`` marks the single step in progress after a mid-epoch change; its prompt tokens
    were handed out to the sequences then (``_Seq.step_alloc``)."""

    t0: float
    steps: int
    full_s: float
    last_s: float
    chunk: int  # prompt tokens a full step carries
    decoding: int
    split: bool = False

    @property
    def end(self) -> float:
        return self.t0 + (self.steps - 1) * self.full_s + self.last_s


class ServingEngine:
    """One simulated continuous-batching server bound to the running asyncio loop."""

    def __init__(self, profile: EngineProfile) -> None:
        self.profile = profile
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count()
        self._queue: deque[_Seq] = deque()  # waiting for a slot and KV room
        self._prefill: deque[_Seq] = deque()  # admitted, prompt being processed in order
        self._pending = 0  # prompt tokens left over all of _prefill
        self._decoding: dict[int, _Seq] = {}
        self._heap: list[tuple[int, int]] = []  # (target_step, id); stale entries skipped
        self._steps = 0  # engine steps finished
        self._epoch: _Epoch | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._t_last: float | None = None
        self._t_first: float | None = None
        self.kv_used = 0
        # counters
        self.completed_requests = 0
        self.cancelled_requests = 0
        self.completed_tokens = 0
        self.wasted_tokens = 0
        self.prompt_tokens = 0
        self.decode_tokens = 0  # tokens generated (completed and cancelled requests)
        self.steps_run = 0
        self.busy_s = 0.0
        self.running_time = 0.0  # integral of admitted sequences over time (mean concurrency)
        self.waiting_time = 0.0  # integral of queued requests over time (mean queue length)

    # -- public ---------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._prefill) + len(self._decoding)

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
        seq = _Seq(
            next(self._ids), prompt_tokens, completion_tokens, loop.create_future(), loop.time()
        )
        self._change(lambda: self._queue.append(seq))
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
        busy_s, running_time, waiting_time = self.busy_s, self.running_time, self.waiting_time
        decode_tokens = float(self.decode_tokens)
        epoch = self._epoch
        if self._t_last is not None and now > self._t_last:
            dt = now - self._t_last
            if epoch is not None:
                busy_s += dt
            running_time += dt * self.running
            waiting_time += dt * len(self._queue)
        if epoch is not None and now > epoch.t0:  # steps done in this epoch, not committed yet
            decode_tokens += epoch.decoding * min(epoch.steps, (now - epoch.t0) / epoch.full_s)
        elapsed = 0.0 if self._t_first is None else now - self._t_first
        attainable = self.profile.attainable_tokens_per_s
        return {
            "profile": self.profile.name,
            "now": now,
            "running": len(self._decoding),
            "prefilling": len(self._prefill),
            "queued": len(self._queue),
            "kv_used_tokens": self.kv_used,
            "completed_requests": self.completed_requests,
            "cancelled_requests": self.cancelled_requests,
            "prompt_tokens": self.prompt_tokens,
            "completed_tokens": self.completed_tokens,
            "wasted_tokens": self.wasted_tokens,
            "decode_tokens": round(decode_tokens),
            "steps": self.steps_run,
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

    # -- changes: always at a step boundary -----------------------------------------------------

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _change(self, mutate: Callable[[], None]) -> None:
        """Apply ``mutate`` (an arrival or a cancellation).  Between steps the new batch starts
        at once; in the middle of a step it starts when that step ends."""
        now = self._now()
        at_boundary = self._sync(now)
        mutate()
        if at_boundary:
            self._admit(now)
            self._plan(now)

    def _sync(self, now: float) -> bool:
        """Bring the engine up to ``now``; True if ``now`` is a step boundary."""
        self._integrate(now)
        epoch = self._epoch
        if epoch is None:
            return True
        if now <= epoch.t0 + _EPS_S:  # the planned steps have not started: re-plan them
            self._drop_timer()
            self._epoch = None
            return True
        if now >= epoch.end - _EPS_S:  # the epoch is over (its timer is due now)
            self._drop_timer()
            self._finish_epoch(now)
            return True
        if not epoch.split:
            self._split(epoch, now)
        return False

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        if self._sync(now):
            self._admit(now)
            self._plan(now)
        # else: a real loop woke us early, inside the epoch; _sync split it and re-armed

    def _drop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the step machinery ---------------------------------------------------------------------

    def _integrate(self, now: float) -> None:
        """Advance the time integrals (counts only change at calls to this)."""
        if self._t_last is None:
            self._t_first = self._t_last = now
            return
        dt = now - self._t_last
        if dt <= 0:
            return
        if self._epoch is not None:
            self.busy_s += dt
        self.running_time += dt * self.running
        self.waiting_time += dt * len(self._queue)
        self._t_last = now

    def _admit(self, now: float) -> None:
        """Admit queued requests in FIFO order while a slot and KV room are free."""
        cap = self.profile.kv_capacity_tokens
        while self._queue:
            head = self._queue[0]
            if self.running >= self.profile.max_running or self.kv_used + head.kv_tokens > cap:
                break  # head-of-line blocking, as in a FIFO scheduler
            self._queue.popleft()
            head.state = "prefill"
            head.admitted = now
            head.prefill_left = head.prompt_tokens
            self.kv_used += head.kv_tokens
            self.prompt_tokens += head.prompt_tokens
            self._pending += head.prompt_tokens
            self._prefill.append(head)

    def _plan(self, now: float) -> None:
        """Plan the steps up to the next completion and arm one timer for their end."""
        n = len(self._decoding)
        if n == 0 and self._pending == 0:
            self._epoch = None
            return
        p = self.profile
        chunk = max(0, p.max_batched_tokens - n)
        steps_to_decode = math.inf
        while self._heap and self._heap[0][1] not in self._decoding:
            heapq.heappop(self._heap)
        if self._heap:
            steps_to_decode = self._heap[0][0] - self._steps
        steps_to_prefill = math.inf
        if self._prefill and chunk > 0:
            steps_to_prefill = math.ceil(self._prefill[0].prefill_left / chunk)
        steps = max(1, int(min(steps_to_decode, steps_to_prefill)))
        last_chunk = max(0, min(chunk, self._pending - (steps - 1) * chunk))
        self._epoch = _Epoch(
            t0=now,
            steps=steps,
            full_s=p.step_time(n, min(chunk, self._pending)),
            last_s=p.step_time(n, last_chunk),
            chunk=chunk,
            decoding=n,
        )
        assert self._loop is not None
        self._timer = self._loop.call_at(self._epoch.end, self._on_timer)

    def _split(self, epoch: _Epoch, now: float) -> None:
        """A change in the middle of an epoch: commit the whole steps done, and let the step in
        progress finish with the batch it started with (its prompt tokens handed out now)."""
        done = min(epoch.steps - 1, int((now - epoch.t0) / epoch.full_s))
        self._run_steps(done, epoch.chunk, epoch.decoding)
        last = done == epoch.steps - 1
        step_s = epoch.last_s if last else epoch.full_s
        budget = min(epoch.chunk, self._pending)
        for seq in self._prefill:  # hand the step's prompt tokens out, oldest request first
            seq.step_alloc = min(seq.prefill_left, budget)
            budget -= seq.step_alloc
        self._drop_timer()
        self._epoch = _Epoch(
            t0=epoch.t0 + done * epoch.full_s,
            steps=1,
            full_s=step_s,
            last_s=step_s,
            chunk=epoch.chunk,
            decoding=epoch.decoding,
            split=True,
        )
        assert self._loop is not None
        self._timer = self._loop.call_at(self._epoch.end, self._on_timer)

    def _run_steps(self, steps: int, chunk: int, decoding: int) -> None:
        """Commit ``steps`` whole steps: every decoding sequence made that many tokens and the
        prompt queue moved on by ``chunk`` tokens a step, oldest request first."""
        if steps <= 0:
            return
        self._steps += steps
        self.steps_run += steps
        self.decode_tokens += decoding * steps
        budget = min(steps * chunk, self._pending)
        self._pending -= budget
        for seq in self._prefill:
            if budget <= 0:
                break
            take = min(seq.prefill_left, budget)
            seq.prefill_left -= take
            budget -= take

    def _finish_epoch(self, now: float) -> None:
        """The epoch's last step is done: commit it and complete what it completed."""
        epoch = self._epoch
        assert epoch is not None
        self._epoch = None
        if epoch.split:  # a sequence cancelled during the step made no token in it
            self._steps += 1
            self.steps_run += 1
            self.decode_tokens += len(self._decoding)
            for seq in self._prefill:
                seq.prefill_left -= seq.step_alloc
                self._pending -= seq.step_alloc
                seq.step_alloc = 0
        else:
            self._run_steps(epoch.steps, epoch.chunk, epoch.decoding)
        while self._prefill and self._prefill[0].prefill_left <= 0:
            self._start_decoding(self._prefill.popleft(), now)
        while self._heap and self._heap[0][0] <= self._steps:
            _, sid = heapq.heappop(self._heap)
            finished = self._decoding.pop(sid, None)
            if finished is not None:
                self._complete(finished, now)

    def _start_decoding(self, seq: _Seq, now: float) -> None:
        """Its prompt is in: the step that finished it produced its first token."""
        seq.state = "decode"
        seq.first_token = now
        seq.start_step = self._steps
        seq.target_step = self._steps + seq.completion_tokens - 1
        self.decode_tokens += 1
        self._decoding[seq.id] = seq
        heapq.heappush(self._heap, (seq.target_step, seq.id))

    def _complete(self, seq: _Seq, now: float) -> None:
        seq.state = "done"
        self.kv_used -= seq.kv_tokens
        self.completed_requests += 1
        self.completed_tokens += seq.completion_tokens
        if not seq.future.done():
            seq.future.set_result(Timing(seq.submitted, seq.admitted, seq.first_token, now))

    def _cancel(self, seq: _Seq) -> int:
        """The caller went away: drop the sequence, free its KV, count the work thrown away
        (returned: tokens it had generated)."""
        if seq.state in ("done", "cancelled"):  # finished just as the caller was cancelled
            return 0
        made = 0

        def drop() -> None:
            nonlocal made
            if seq.state in ("done", "cancelled"):  # the step that just ended finished it
                return
            if seq.state == "queued":
                self._queue.remove(seq)
            elif seq.state == "prefill":
                self._prefill.remove(seq)
                self._pending -= seq.prefill_left
                self.kv_used -= seq.kv_tokens
            elif seq.state == "decode":
                self._decoding.pop(seq.id, None)
                self.kv_used -= seq.kv_tokens
                made = max(0, min(seq.completion_tokens, self._steps - seq.start_step + 1))
                self.wasted_tokens += made
            seq.state = "cancelled"
            self.cancelled_requests += 1

        self._change(drop)
        return made
