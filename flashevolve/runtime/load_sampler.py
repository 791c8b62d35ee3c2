"""Ask the run's backends for their own load every few seconds and log what they say.

A backend that can tell (vLLM, llama-server with ``--metrics``, the simulated engine; see
:class:`~flashevolve.backends.base.LoadReporter`) gives requests running and waiting and,
sometimes, the KV-cache fill.  Each answer is a ``backend_load`` event.  Requests waiting per
request running is where a server's knee shows: about zero while it has room, rising once it is
full (docs/benchmarks.md section 4).  A run whose backends cannot tell logs nothing and the
sampler ends after its first look.  Behind a router (``backends.router``) each server's load is
its own event, under its endpoint.
"""

from __future__ import annotations

from typing import Any

from flashevolve.backends.base import LLM, BackendLoad
from flashevolve.events.schema import Kind
from flashevolve.runtime.context import StageContext


async def _loads(llm: Any) -> dict[str, BackendLoad]:
    """endpoint -> load: each server of a backend that spreads requests over several (a router's
    ``loads()``), else the backend's own ``load()``."""
    inner = getattr(llm, "inner", llm)
    if hasattr(inner, "loads"):
        return dict(await inner.loads())
    load = await llm.load()
    return {} if load is None else {llm.endpoint: load}


async def sample_backend_load(ctx: StageContext, every_s: float) -> None:
    backends: dict[int, LLM] = {}
    for llm in (ctx.task_llm, ctx.reflection_llm):
        inner = getattr(llm, "inner", llm)  # one server used for both roles is asked once
        backends.setdefault(id(inner), llm)
    asking = [llm for llm in backends.values() if hasattr(llm, "load")]
    first = True
    while asking:
        answered = []
        for llm in asking:
            loads = await _loads(llm)
            if loads:
                answered.append(llm)
            for endpoint, load in loads.items():
                ctx.log.emit(
                    Kind.BACKEND_LOAD,
                    endpoint=endpoint,
                    data={
                        "running": load.running,
                        "waiting": load.waiting,
                        "kv_usage": load.kv_usage,
                    },
                )
        if first:  # those that cannot tell now will not be able to later
            asking, first = answered, False
        await ctx.clock.sleep(every_s)
