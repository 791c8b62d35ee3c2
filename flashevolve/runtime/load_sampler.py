"""Ask the run's backends for their own load every few seconds and log what they say.

A backend that can tell (vLLM, llama-server with ``--metrics``, the simulated engine; see
:class:`~flashevolve.backends.base.LoadReporter`) gives requests running and waiting and,
sometimes, the KV-cache fill.  Each answer is a ``backend_load`` event.  Requests waiting per
request running is where a server's knee shows: about zero while it has room, rising once it is
full (docs/benchmarks.md section 4).  A run whose backends cannot tell logs nothing and the
sampler ends after its first look.
"""

from __future__ import annotations

from flashevolve.events.schema import Kind
from flashevolve.runtime.context import StageContext


async def sample_backend_load(ctx: StageContext, every_s: float) -> None:
    backends = {}
    for llm in (ctx.task_llm, ctx.reflection_llm):
        inner = getattr(llm, "inner", llm)  # one server used for both roles is asked once
        backends.setdefault(id(inner), llm)
    asking = [llm for llm in backends.values() if hasattr(llm, "load")]
    first = True
    while asking:
        answered = []
        for llm in asking:
            load = await llm.load()
            if load is None:
                continue
            answered.append(llm)
            ctx.log.emit(
                Kind.BACKEND_LOAD,
                endpoint=llm.endpoint,
                data={"running": load.running, "waiting": load.waiting, "kv_usage": load.kv_usage},
            )
        if first:  # those that cannot tell now will not be able to later
            asking, first = answered, False
        await ctx.clock.sleep(every_s)
