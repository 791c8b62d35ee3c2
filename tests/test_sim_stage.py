"""Which workload answers a request: the stage it names (in process, or over HTTP the
X-Flashevolve-Stage header) and the per-workflow SimWorkload, with the prompt-text guess only
as the fallback for clients that name no stage."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence

import openai
import pytest

from flashevolve.backends.base import ChatRequest
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.server import SimulatorResponder, serve_in_thread
from flashevolve.backends.sim import LengthDist, SimulatedLLM, SimWorkload, simulated
from flashevolve.backends.sim.workload import ANSWER_RE, FENCE, quality_marker
from flashevolve.errors import ConfigError
from flashevolve.runtime.clock import run_virtual


class EchoStage:
    """A content model that says which stage it was asked for."""

    def respond(
        self,
        messages: Sequence[Mapping[str, object]],
        stage: str,
        rng: random.Random,
        *,
        truncated: bool = False,
    ) -> str:
        return f"stage={stage}"


TOY = SimWorkload(
    name="toy",
    content=EchoStage(),
    lengths={"alpha": LengthDist(mean=100, sigma=0.0, cap=100)},
    default_length=LengthDist(mean=10, sigma=0.0, cap=10),
    guess_stage=lambda messages: "guessed",
)
MSGS = [{"role": "user", "content": "hello"}]


def test_the_named_stage_picks_length_and_answer_and_the_guess_is_only_a_fallback() -> None:
    llm = SimulatedLLM(seed=0, workload=TOY)

    async def main():
        return await asyncio.gather(
            llm.complete(ChatRequest(MSGS, stage="alpha")),
            llm.complete(ChatRequest(MSGS, stage="beta")),  # not in the table: default length
            llm.complete(ChatRequest(MSGS)),  # no stage: the workload's guess
        )

    alpha, beta, unnamed = run_virtual(main())
    assert (alpha.text, alpha.completion_tokens) == ("stage=alpha", 100)
    assert (beta.text, beta.completion_tokens) == ("stage=beta", 10)
    assert (unnamed.text, unnamed.completion_tokens) == ("stage=guessed", 10)
    assert llm.describe()["workload"] == "toy"


def test_over_http_the_stage_header_selects_and_headerless_clients_are_guessed() -> None:
    responder = SimulatorResponder("vllm-h100-qwen3-8b", seed=0, speed=200.0, workload=TOY)
    with serve_in_thread(responder) as base_url:

        async def main():
            ours = OpenAICompatLLM(base_url, responder.model, max_retries=0)
            plain = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
            try:
                named = await ours.complete(ChatRequest(MSGS, stage="alpha"))
                headerless = await plain.chat.completions.create(model="m", messages=MSGS)
            finally:
                await ours.aclose()
                await plain.close()
            return named, headerless

        named, headerless = asyncio.run(main())
    assert (named.text, named.completion_tokens) == ("stage=alpha", 100)
    assert headerless.choices[0].message.content == "stage=guessed"
    assert headerless.usage is not None and headerless.usage.completion_tokens == 10


def test_gepa_workload_trusts_the_stage_over_the_prompt_text() -> None:
    # A prompt that reads like a reflection request: without a stage the GEPA fallback guesses
    # "propose" (a fenced answer); named "validate", it is an evaluation answer padded with
    # filler to its sampled length.
    text = f"Improve the instruction:\n{FENCE}\nDo it. {quality_marker(0.4)}\n{FENCE}\n"
    msgs = [{"role": "user", "content": text}]
    llm = simulated("vllm-h100-qwen3-8b", seed=0)

    async def main():
        return await asyncio.gather(
            llm.complete(ChatRequest(msgs)), llm.complete(ChatRequest(msgs, stage="validate"))
        )

    guessed, named = run_virtual(main())
    assert FENCE in guessed.text and not ANSWER_RE.search(guessed.text)
    assert ANSWER_RE.match(named.text)
    assert len(named.text) == pytest.approx(4 * named.completion_tokens, abs=8)
    assert "\n" in named.text and FENCE not in named.text


def test_workloads_by_name() -> None:
    assert simulated(workload="gepa").workload.name == "gepa"
    with pytest.raises(ConfigError, match="unknown workflow 'nope'.*gepa"):
        simulated(workload="nope")
