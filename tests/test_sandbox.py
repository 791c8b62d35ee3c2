"""The sandbox's API: results, the model channel (through a real OpenAI-compatible server on
127.0.0.1), bounds on the channel, sessions, cancellation and the refusal policy.  The escape
attempts live in tests/test_sandbox_attacks.py."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid

import pytest

from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.server import OpenAICompatServer, ScriptedResponder
from flashevolve.errors import ConfigError, UserError
from flashevolve.events.log import EventLog
from flashevolve.runtime.instrument import InFlight, InstrumentedLLM
from flashevolve.sandbox import (
    LLMCall,
    Sandbox,
    SandboxConfig,
    SandboxRefused,
    llm_forwarder,
    protections,
)


def host_processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (root sees every process's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_protections_are_probed_and_consistent() -> None:
    prot = protections()
    active = prot.active()
    assert ("net-ns" in active) == prot.net_ns and ("pid-ns" in active) == prot.pid_ns
    assert prot.isolated == (prot.net_ns or prot.mount_ns or prot.landlock)
    assert prot.summary().startswith(f"sandbox isolation={prot.isolation}")
    assert prot.as_dict()["landlock_abi"] == prot.landlock_abi
    if not prot.isolated:
        pytest.skip(f"this machine offers no isolation: {prot.notes}")


def test_run_reports_output_value_and_exit() -> None:
    sandbox = Sandbox(timeout_s=10)
    result = sandbox.run_sync(
        "import fe_llm, os\nprint('hello')\nfe_llm.set_result({'cwd': os.getcwd()})\n"
    )
    assert result.ok and result.exit_code == 0 and result.stdout == "hello\n"
    assert result.has_value and os.path.basename(result.value["cwd"]) in ("sandbox", "work")
    assert result.protections == sandbox.protections().active()


def test_module_function_entry_gets_args_and_returns_value() -> None:
    files = {"harness.py": "def predict(example):\n    return example['a'] * 2\n"}
    result = Sandbox(timeout_s=10).run_sync(files=files, entry="harness:predict", args={"a": 21})
    assert result.ok and result.value == 42


def test_failures_are_reported_with_their_exit() -> None:
    sandbox = Sandbox(timeout_s=10)
    exited = sandbox.run_sync("import sys; sys.exit(3)")
    assert exited.status == "error" and exited.exit_code == 3 and exited.signal is None
    raised = sandbox.run_sync("raise ValueError('bad input')")
    assert raised.status == "error" and raised.exit_code == 1
    assert raised.program_error == "ValueError: bad input"
    assert "ValueError: bad input" in raised.stderr and "bad input" in raised.reason


async def _serve(script) -> tuple[OpenAICompatServer, OpenAICompatLLM]:  # noqa: ANN001
    server = OpenAICompatServer(ScriptedResponder(script, model="scripted"))
    url = await server.start()
    return server, OpenAICompatLLM(url, "scripted", api_key="test", max_retries=0)


CALLER = """
import fe_llm, threading
answers = {}
def ask(i):
    answers[i] = fe_llm.complete([{"role": "user", "content": f"q{i}"}], max_tokens=8)
threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
for t in threads: t.start()
for t in threads: t.join()
fe_llm.set_result([answers[i] for i in range(3)])
"""


def test_model_calls_go_through_the_runs_instrumented_backend() -> None:
    async def main() -> tuple[object, OpenAICompatServer, EventLog]:
        server, client = await _serve(lambda req: "echo " + req.messages[-1]["content"])
        log = EventLog()
        llm = InstrumentedLLM(client, "task", log, InFlight())
        try:
            forward = llm_forwarder(llm, stage="evaluate", item_id="cand1/ex1")
            result = await Sandbox(timeout_s=20).run(CALLER, llm=forward)
        finally:
            await client.aclose()
            await server.stop()
        return result, server, log

    result, server, log = asyncio.run(main())
    assert result.ok and result.value == ["echo q0", "echo q1", "echo q2"]
    assert result.llm_calls == 3 and server.stats()["completed"] == 3
    finished = [e for e in log.snapshot() if e.kind == "request_finished"]
    assert len(finished) == 3
    assert {(e.stage, e.item_id) for e in finished} == {("evaluate", "cand1/ex1")}


BAD_CHANNEL = """
import fe_llm
seen = {}
for i in range(3):
    try:
        seen[i] = fe_llm.complete("q", max_tokens=4)
    except fe_llm.ModelError as err:
        seen[i] = "refused: " + str(err)
out = fe_llm._channel._out
out.write(b"not json at all\\n")
out.write(b"[1, 2]\\n")
out.write(b'{"kind": "llm", "id": 77, "messages": []}\\n')
out.write(b"x" * 5000 + b"\\n")
out.flush()
try:
    fe_llm.complete([{"role": "wizard", "content": "x"}])
except fe_llm.ModelError as err:
    seen["role"] = str(err)
fe_llm.set_result(seen)
"""


def test_channel_bounds_calls_and_survives_malformed_lines() -> None:
    async def answer(call: LLMCall) -> str:
        return f"answer {call.index}"

    sandbox = Sandbox(timeout_s=20, max_llm_calls=2, max_message_bytes=4096)
    result = sandbox.run_sync(BAD_CHANNEL, llm=answer)
    assert result.ok, result.stderr
    assert result.value["0"] == "answer 1" and result.value["1"] == "answer 2"
    assert "limit of 2 model calls" in result.value["2"]
    assert "messages.0.role" in result.value["role"]
    assert result.llm_calls == 2
    errors = " | ".join(result.channel_errors)
    assert "not JSON" in errors and "not a JSON object" in errors
    assert "malformed model call: messages" in errors and "4096-byte limit" in errors


def test_backend_failure_reaches_the_program_as_model_error() -> None:
    async def broken(call: LLMCall) -> str:
        raise RuntimeError("backend down")

    code = (
        "import fe_llm\ntry:\n    fe_llm.complete('q')\nexcept fe_llm.ModelError as e:\n"
        "    fe_llm.set_result(str(e))\n"
    )
    result = Sandbox(timeout_s=10).run_sync(code, llm=broken)
    assert result.ok and result.value == "RuntimeError: backend down"
    assert any("backend down" in e for e in result.channel_errors)


def test_cancelling_the_caller_kills_the_program_and_its_model_call() -> None:
    marker = f"fe-cancel-{uuid.uuid4().hex}"
    child = "import time; print('up', flush=True); time.sleep(120)"
    code = (  # the model call is made once the child says it runs
        "import subprocess, sys, fe_llm\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}, {marker!r}], stdout=-1)\n"
        "p.stdout.readline()\n"
        "fe_llm.complete('wait for me')\n"
    )
    cancelled = []

    async def main() -> None:
        called = asyncio.Event()

        async def slow(call: LLMCall) -> str:
            called.set()
            try:
                await asyncio.Event().wait()  # never answers
            except asyncio.CancelledError:
                cancelled.append(call.index)
                raise
            return ""

        task = asyncio.create_task(Sandbox(timeout_s=60).run(code, llm=slow))
        await called.wait()
        assert host_processes_with(marker), "the child process should be running"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cancelled == [1]
    assert host_processes_with(marker) == []


SESSION_MODULE = """
import fe_llm
calls = 0
def predict(x):
    global calls
    calls += 1
    return {"y": x + 1, "calls": calls}
def ask(q):
    return fe_llm.complete(q)
def boom():
    raise KeyError("nope")
def hang():
    while True:
        pass
"""


def test_session_runs_many_calls_in_one_process_and_dies_on_timeout() -> None:
    async def answer(call: LLMCall) -> str:
        return "model says " + call.messages[-1]["content"]

    async def main() -> list[object]:
        sandbox = Sandbox(timeout_s=20)
        async with sandbox.session(
            "harness", files={"harness.py": SESSION_MODULE}, llm=answer
        ) as s:
            assert s.ready.ok
            out: list[object] = [await s.call("predict", i) for i in range(3)]
            out.append(await s.call("ask", "hi"))
            out.append(await s.call("boom"))
            out.append(await s.call("hang", timeout_s=1))
            out.append(await s.call("predict", 10))
            out.append(await s.close())
        return out

    *calls, (boom), (hung), (after), final = asyncio.run(main())
    assert [c.value for c in calls[:3]] == [{"y": i + 1, "calls": i + 1} for i in range(3)]
    assert calls[3].value == "model says hi"
    assert boom.status == "error" and boom.error == "KeyError: 'nope'"
    assert hung.status == "timeout" and after.status == "dead"
    assert final.status == "timeout" and final.llm_calls == 1


def test_session_reports_an_import_error() -> None:
    async def main() -> tuple[object, object]:
        files = {"harness.py": "import does_not_exist\n"}
        async with Sandbox(timeout_s=20).session("harness", files=files) as s:
            return s.ready, await s.call("anything")

    ready, call = asyncio.run(main())
    assert ready.status == "error" and "does_not_exist" in ready.error
    assert call.status == "dead"


def test_no_isolation_is_refused_unless_accepted_loudly() -> None:
    bare = Sandbox(isolation="none", landlock=False)
    assert not bare.protections().isolated
    with pytest.raises(SandboxRefused, match="allow_unsandboxed=True") as err:
        bare.run_sync("print('hi')")
    assert isinstance(err.value, UserError)
    accepted = Sandbox(isolation="none", landlock=False, allow_unsandboxed=True)
    result = accepted.run_sync("print('hi')")
    assert result.ok and result.stdout == "hi\n" and "net-ns" not in result.protections


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        Sandbox(timeout_s=-1)
    with pytest.raises(ConfigError, match="memroy_mb"):
        SandboxConfig.of(None, memroy_mb=5)
    with pytest.raises(ConfigError, match="relative path"):
        Sandbox().run_sync(files={"../escape.py": "x"}, entry="../escape.py")
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        Sandbox().run_sync(files={"m.py": "def f(x): pass"}, entry="m:f", args={1, 2})


def test_run_sync_from_worker_threads_and_concurrent_runs() -> None:
    sandbox = Sandbox(timeout_s=20)
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        results[i] = sandbox.run_sync(f"import fe_llm; fe_llm.set_result({i})")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r.value for i, r in results.items()} == {0: 0, 1: 1, 2: 2}


def test_security_table_marks_what_was_not_stopped() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "security_table.py"
    spec = importlib.util.spec_from_file_location("security_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prot = protections().as_dict()
    report = {
        "machine": {"default": prot, "weak": prot},
        "records": [
            {"attack": "a", "variant": "default", "stopped": True, "how": "wall"},
            {"attack": "a", "variant": "weak", "stopped": False, "how": "NOT STOPPED"},
            {"attack": "b", "variant": "default", "stopped": True, "how": "other wall"},
        ],
    }
    table = module.render(report)
    assert "| a | stopped: wall | **NOT STOPPED** |" in table
    assert "| b | stopped: other wall | not run |" in table


@pytest.mark.parametrize("site_packages", [True, False])
def test_site_packages_are_importable_only_when_allowed(site_packages: bool) -> None:
    code = (
        "import fe_llm\ntry:\n    import pydantic\n    fe_llm.set_result('imported')\n"
        "except ImportError:\n    fe_llm.set_result('missing')\n"
    )
    result = Sandbox(site_packages=site_packages).run_sync(code)
    assert result.value == ("imported" if site_packages else "missing")
