"""End to end on a real language model: async GEPA on the embedded llama-server.

Needs the cached llama-server binary (``make test`` builds it first). The budget is short, so
this checks that every part really ran -- real requests with real token counts, proposals from
real reflections (or recorded rejections), validations and a consistent pool -- not that a
135M-parameter model gets better in a minute.  The budget counts proposals, not seconds, so the
test does not depend on how fast the machine is.
"""

from __future__ import annotations

import polars as pl
import pytest

from flashevolve import Evolver
from flashevolve.events.schema import Kind
from flashevolve.tasks import get_task
from flashevolve.workflows.gepa.reflection import fenced_block_grammar

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def llm():
    from flashevolve.backends.llama import local
    from flashevolve.backends.llama_build import find_llama_server

    if find_llama_server() is None:
        pytest.skip("llama-server is not built: run `make llama-server` (make test builds it)")
    server = local(slots=4, ctx_per_slot=2048, startup_timeout_s=120)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.timeout(1000)
def test_async_gepa_runs_on_the_embedded_llama_server(llm, tmp_path):
    task = get_task("ifeval-lite", n_train=12, n_val=6)
    evolver = Evolver(
        task,
        llm,
        mode="async",
        budget={"proposals": 2, "seconds": 900},  # the time is only a cap
        seed=0,
        workers={"rollout": 2, "propose": 2, "evaluate": 2},
        max_in_flight=6,
        eval_concurrency=2,
        reflection_max_tokens=300,
        reflection_extra_body={"grammar": fenced_block_grammar()},
        run_dir=tmp_path,
    )
    summary = evolver.run_sync()
    df = evolver.events
    finished = df.filter(pl.col("kind") == Kind.REQUEST_FINISHED)
    # the seed's 6 validations, a parent minibatch of 3 and a reflection, at least
    assert finished.height >= 10
    assert (finished["completion_tokens"] > 0).all() and (finished["prompt_tokens"] > 0).all()
    assert set(finished["role"].to_list()) >= {"task", "reflection"}
    # the grammar (sent only with reflection requests) gets even a 135M model to close its block
    assert summary["proposals"] >= 2
    stops = df.filter(pl.col("kind") == Kind.BUDGET_STOP)["reason"].to_list()
    assert stops and "proposal budget" in stops[0]  # it ended on the count, not the time cap
    assert summary["seed_score"] is not None and 0.0 <= summary["seed_score"] <= 1.0
    # every admitted artifact is on disk and the pool is consistent
    assert len(evolver.pool) >= 1 and (tmp_path / "artifacts.jsonl").exists()
    assert summary["errors"] == 0
    assert df.filter(pl.col("kind") == Kind.REQUEST_FAILED).height == 0
