"""Meta-Harness against the real sandbox: real subprocesses, a real OpenAI-compatible server on
127.0.0.1 (scripted answers), real time with small budgets.  The import check rejects broken
harnesses; crashing, hanging and hostile harnesses score 0 with a reason while the run goes on;
the harness's model calls are the run's instrumented requests; no isolation means no run unless
the loud opt-out is given."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flashevolve import Evolver
from flashevolve.backends.base import ChatRequest
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.server import OpenAICompatServer, ScriptedResponder
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Kind
from flashevolve.runtime.instrument import InFlight, InstrumentedLLM
from flashevolve.sandbox import SandboxRefused, protections
from flashevolve.tasks import get_task
from flashevolve.workflows.meta_harness import PROTECTIONS_EVENT, SandboxRunner, ThreadsafeLLM

pytestmark = pytest.mark.skipif(
    not protections().isolated, reason="this machine offers no sandbox isolation"
)

#: A harness that uses its memory: the training example sharing most words decides.
KNN = """\
import re

import fe_llm

MEMORY = []


def words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def setup(memory):
    MEMORY[:] = [(words(e["text"]), e["label"]) for e in memory["examples"]]


def predict(text):
    seen = words(text)
    best = max(MEMORY, key=lambda m: len(seen & m[0]) / (1 + len(m[0])))
    note = fe_llm.complete(f"Confirm the intent {best[1]} for: {text}", max_tokens=8)
    print("nearest:", best[1])
    return {"label": best[1], "model": note}
"""

HANG = KNN.replace("    seen = words(text)\n", "    while True:\n        pass\n")
CRASH = KNN.replace("    seen = words(text)\n", "    raise RuntimeError('harness bug')\n")
READ_OUTSIDE = KNN.replace(
    "    seen = words(text)\n", "    return {'label': open(SECRET_PATH).read()}\n"
)
NETWORK = KNN.replace(
    "    seen = words(text)\n",
    "    import socket\n"
    "    socket.create_connection(('127.0.0.1', SERVER_PORT), timeout=3).close()\n"
    "    return {'label': 'REACHED' + '-SERVER'}\n",  # built at run time: not in the code
)


def proposal(code: str, hypothesis: str) -> str:
    return f"HYPOTHESIS: {hypothesis}\n```python\n{code}```\n"


def scripted(proposals: list[str]):  # noqa: ANN201
    """The model: proposer requests get the next scripted proposal (then prose without code);
    the harness's requests get a fixed label."""
    queue = iter(proposals)

    def answer(request: ChatRequest) -> str:
        text = request.messages[-1]["content"]
        if "## What to write" in text:
            return next(queue, "I have no further ideas.")
        return "call_contact"

    return answer


async def serve(script: Any) -> tuple[OpenAICompatServer, OpenAICompatLLM, int]:
    server = OpenAICompatServer(ScriptedResponder(script, model="scripted"))
    url = await server.start()
    port = int(url.split(":")[2].split("/")[0])
    return server, OpenAICompatLLM(url, "scripted", api_key="test", max_retries=0), port


def small_task() -> Any:
    return get_task("intent-lite", n_train=48, n_val=3)


def test_the_import_check_rejects_broken_harnesses_and_passes_good_ones() -> None:
    task = small_task()
    runner = SandboxRunner(check_timeout_s=5)
    cases = {
        "good": (KNN, None),
        "syntax": (KNN + "\ndef broken(:\n    pass\n", "SyntaxError"),
        "no predict": (KNN.replace("def predict(", "def guess("), "predict() is not defined"),
        "arity": (KNN.replace("def setup(memory)", "def setup()"), "setup() cannot be called"),
        "import error": ("import numpy_that_does_not_exist\n" + KNN, "ModuleNotFoundError"),
        "raises at import": ("raise SystemError('no')\n" + KNN, "SystemError"),
        "hangs at import": ("while True:\n    pass\n" + KNN, "import check failed (timeout"),
        "not callable": (KNN + "\npredict = 3\n", "predict is not callable"),
        "driver clash": (None, "may not ship a file named fe_harness.py"),
    }

    async def main() -> dict[str, Any]:
        out = {}
        for name, (code, _) in cases.items():
            files = {"harness.py": code} if code else {"harness.py": KNN, "fe_harness.py": "x"}
            out[name] = await runner.check(files, task)
        return out

    verdicts = asyncio.run(main())
    assert verdicts["good"].ok, verdicts["good"].reason
    for name, (_, why) in cases.items():
        if why is not None:
            assert not verdicts[name].ok and why in verdicts[name].reason, (name, verdicts[name])


def test_hostile_harnesses_score_zero_with_a_reason_and_the_run_goes_on(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")

    async def main() -> tuple[Evolver, int]:
        holder: dict[str, str] = {}
        server, llm, port = await serve(lambda request: holder["script"](request))
        header = f"SECRET_PATH = {str(secret)!r}\nSERVER_PORT = {port}\n"
        holder["script"] = scripted(
            [
                proposal(header + HANG, "loop forever"),
                proposal(header + CRASH, "crash"),
                proposal(header + READ_OUTSIDE, "read a file outside"),
                proposal(header + NETWORK, "reach the network"),
                proposal(KNN, "nearest training example"),
            ]
        )
        ev = Evolver(
            small_task(),
            llm,
            workflow="meta-harness",
            mode="sync",
            budget={"proposals": 5},
            load_every_s=None,
            processes=1,
            predict_timeout_s=3,
        )
        try:
            await ev.run()
        finally:
            await llm.aclose()
            await server.stop()
        return ev, port

    ev, _ = asyncio.run(main())
    assert ev.state == "finished"
    events = ev.events
    made = events.filter(pl.col("kind") == Kind.PROPOSAL_MADE)
    by_hypothesis = {
        json.loads(data)["hypothesis"]: artifact
        for data, artifact in zip(made["data"], made["artifact_id"], strict=True)
    }
    expected = {
        "loop forever": "timeout",
        "crash": "RuntimeError: harness bug",
        "read a file outside": "Error",  # FileNotFoundError / PermissionError
        "reach the network": "Error",  # ConnectionRefusedError / PermissionError
    }
    rows = events.filter(pl.col("kind") == Kind.ROLLOUT_FINISHED)
    for hypothesis, why in expected.items():
        artifact = by_hypothesis[hypothesis]
        mine = rows.filter(pl.col("artifact_id") == artifact)
        assert mine.height == 3 and mine["score"].sum() == 0
        reasons = mine["reason"].to_list()
        assert all(reasons), (hypothesis, reasons)
        assert why in reasons[0], (hypothesis, reasons)
        assert artifact not in ev.pool  # scored 0 everywhere: not admitted
        dropped = events.filter(
            (pl.col("kind") == Kind.ITEM_DROPPED) & (pl.col("artifact_id") == artifact)
        )
        assert dropped.height == 1 and dropped["reason"][0].startswith("not admitted")
    # after all of that, the next harness was evaluated and admitted: the run went on
    good = by_hypothesis["nearest training example"]
    assert good in ev.pool and ev.pool.get(good).mean_score > 0
    # the secret never left the sandbox, and nothing reached the server from inside
    everything = events.write_json() + json.dumps(ev.workflow.history.snapshot())
    assert "TOP-SECRET-VALUE" not in everything
    assert "REACHED-SERVER" not in everything
    # the run said at its start which protections were active
    start = events.filter(pl.col("kind") == PROTECTIONS_EVENT)
    data = json.loads(start["data"][0])
    assert start.height == 1 and data["runs_code"] and data["isolated"]
    assert set(data["active"]) == set(protections().active())


def test_the_harness_model_calls_are_instrumented_requests_with_stage_and_item() -> None:
    async def main() -> tuple[Evolver, Any]:
        server, llm, _ = await serve(scripted([proposal(KNN, "nearest training example")]))
        ev = Evolver(
            small_task(),
            llm,
            workflow="meta-harness",
            mode="sync",
            budget={"proposals": 1},
            load_every_s=None,
        )
        try:
            await ev.run()
        finally:
            await llm.aclose()
            await server.stop()
        return ev, server.stats()

    ev, stats = asyncio.run(main())
    requests = ev.requests.filter(pl.col("stage") == "evaluate")
    val = {ex.id for ex in ev.task.val}
    # the seed (one call per example) and the kNN harness (one call per example)
    assert requests.height == 2 * len(val)
    for item in requests["item_id"].to_list():
        owner, example = item.split("/")
        assert example in val and owner
    assert set(requests["role"].to_list()) == {"task"}
    assert stats["completed"] == requests.height + 1  # plus the one proposer call
    sweep = ev.events.filter(pl.col("kind") == Kind.VALIDATION_FINISHED)
    assert [json.loads(d)["llm_calls"] for d in sweep["data"].to_list()] == [len(val), len(val)]
    # the proposer saw the seed's failures with its model calls (the traces of the history)
    prompt = ev.workflow.history.get(ev.pool.records[0].id)
    assert prompt is not None and prompt.failures and "model call:" in prompt.failures[0].trace


def test_a_runner_works_from_a_worker_thread_with_its_own_loop() -> None:
    task = small_task()

    async def main() -> tuple[Any, EventLog]:
        server, client, _ = await serve(lambda request: "call_contact")
        log = EventLog()
        llm = InstrumentedLLM(client, "task", log, InFlight())
        bridged = ThreadsafeLLM(llm, asyncio.get_running_loop())
        runner = SandboxRunner(processes=1)

        def in_thread() -> Any:
            return asyncio.run(
                runner.evaluate(
                    {"harness.py": KNN}, task, task.val, bridged, stage="evaluate", item_id="t1"
                )
            )

        try:
            report = await asyncio.to_thread(in_thread)
        finally:
            await client.aclose()
            await server.stop()
        return report, log

    report, log = asyncio.run(main())
    assert report.aborted is None and report.llm_calls == len(task.val)
    finished = [e for e in log.snapshot() if e.kind == Kind.REQUEST_FINISHED]
    assert {e.item_id for e in finished} == {f"t1/{ex.id}" for ex in task.val}
    assert all(o.trace["stdout"].startswith("nearest:") for o in report.outcomes)


def test_no_isolation_means_no_run_unless_the_opt_out_is_given() -> None:
    bare = {"isolation": "none", "landlock": False}

    async def run(runner: SandboxRunner) -> Evolver:
        server, llm, _ = await serve(scripted([proposal(KNN, "nearest")]))
        ev = Evolver(
            small_task(),
            llm,
            workflow="meta-harness",
            mode="sync",
            budget={"proposals": 1},
            load_every_s=None,
            runner=runner,
        )
        try:
            await ev.run()
        finally:
            await llm.aclose()
            await server.stop()
        return ev

    refused = SandboxRunner(sandbox=bare)
    with pytest.raises(SandboxRefused, match="allow_unsandboxed"):
        asyncio.run(run(refused))
    accepted = asyncio.run(run(SandboxRunner(sandbox=bare, allow_unsandboxed=True)))
    start = accepted.events.filter(pl.col("kind") == PROTECTIONS_EVENT)
    data = json.loads(start["data"][0])
    assert not data["isolated"] and data["allow_unsandboxed"] and len(accepted.pool) == 2


def test_the_opt_out_flag_reaches_the_workflow() -> None:
    import argparse

    from flashevolve.workflows.meta_harness import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([cli.UNSANDBOXED_FLAG, "--harness-timeout", "5"])
    options = cli.evolver_options(args, mode="async", backend_kind="local")
    assert options["allow_unsandboxed"] is True and options["predict_timeout_s"] == 5
    assert "grammar" in options["proposer_extra_body"]
    plain = cli.evolver_options(parser.parse_args([]), mode="sync", backend_kind="http")
    assert "allow_unsandboxed" not in plain and "workers" not in plain


def test_the_task_is_also_a_plain_task_whose_rollout_runs_the_harness() -> None:
    task = small_task()

    async def main() -> Any:
        server, llm, _ = await serve(lambda request: "call_contact")
        try:
            return [
                await task.rollout({"harness.py": code}, task.val[0], llm, stage="s", item_id="x")
                for code in (KNN, CRASH)
            ]
        finally:
            await llm.aclose()
            await server.stop()

    good, bad = asyncio.run(main())
    assert good.error is None and good.score in (0.0, 1.0) and good.feedback
    assert good.trace["calls"] and good.trace["stdout"].startswith("nearest:")
    assert bad.score == 0 and "RuntimeError: harness bug" in (bad.error or "")
