"""The simulator's *workload model*: what a simulated server answers, and how long the answers are.

This is not a language model and it does not solve anything.  A workflow that wants to run on
the serving simulator describes its requests with a :class:`SimWorkload`: a content model (the
text of each answer), an output-length distribution per stage name, and a fallback that guesses
the stage of a request that came without one (a third-party client sends no
``X-Flashevolve-Stage`` header).  Each workflow defines its own (``Workflow.sim_workload()``;
GEPA's, in :mod:`flashevolve.workflows.gepa.sim`, is the default).

The generic pieces every workload may use live here:

- latent markers: every artifact component carries a hidden quality (``[[sim-quality=0.300]]``)
  and every example a hidden difficulty (``[sim-example id=val-17 difficulty=0.430]``);
- :func:`evaluation_answer`: an answer passes when quality + noise >= difficulty, where the noise
  is a deterministic hash of (quality markers, example id) -- the same artifact always gets the
  same score on the same example, but a small edit can flip borderline examples;
- :func:`pad_to_tokens`: cheap filler after an answer's meaningful first line, so an answer is as
  long as its sampled completion and prompts that quote answers (GEPA's reflection records) have
  a realistic size;
- :class:`SimulatedTask`: a stand-in prompt task built on those markers.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from flashevolve.backends.sim.lengths import CHARS_PER_TOKEN, LengthDist
from flashevolve.tasks.base import Example, MetricResult, PromptTask

if TYPE_CHECKING:
    from flashevolve.backends.base import ChatRequest

QUALITY_RE = re.compile(r"\[\[sim-quality=([0-9]*\.?[0-9]+)\]\]")
EXAMPLE_RE = re.compile(r"\[sim-example id=(\S+?) difficulty=([0-9]*\.?[0-9]+)\]")
ANSWER_RE = re.compile(r"ANSWER:\s*(pass|partial|fail|incomplete)", re.IGNORECASE)
FENCE = "```"

#: Used when a prompt carries no quality marker (e.g. a third-party client's own prompt).
UNKNOWN_QUALITY = 0.5

#: Plain text that pads answers and example prompts to a realistic size.  It holds no marker,
#: no fence and no "ANSWER:", so no content model ever reads anything from it.
FILLER = (
    "The reply works through the request step by step, restates what was asked, checks each "
    "stated requirement against the draft and keeps the wording plain and direct. "
)


def quality_marker(q: float) -> str:
    return f"[[sim-quality={q:.3f}]]"


def unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (stable across processes, unlike hash())."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def joined_text(messages: Sequence[Mapping[str, object]]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages)


def filler(chars: int) -> str:
    """``chars`` characters of :data:`FILLER` text."""
    if chars <= 0:
        return ""
    return (FILLER * (chars // len(FILLER) + 1))[:chars]


def pad_to_tokens(text: str, tokens: int) -> str:
    """``text`` followed by filler on new lines, about ``tokens`` tokens long in all."""
    missing = tokens * CHARS_PER_TOKEN - len(text) - 1
    return text if missing <= 0 else f"{text}\n{filler(missing)}"


def evaluation_answer(
    text: str, *, noise: float = 0.06, partial_band: float = 0.05, truncated: bool = False
) -> str:
    """The first line of a simulated answer to an evaluation prompt (``ANSWER: pass`` ...).

    Quality q is the mean of the prompt's quality markers (0.5 if none), difficulty d comes from
    the example marker (or a hash of the prompt); ``q + noise >= d`` passes, within
    ``partial_band`` below is partial credit, else a failure naming a constraint.
    """
    if truncated:
        return "ANSWER: incomplete (output truncated at max_tokens)"
    qualities = [float(q) for q in QUALITY_RE.findall(text)]
    quality = sum(qualities) / len(qualities) if qualities else UNKNOWN_QUALITY
    marker = " ".join(QUALITY_RE.findall(text)) or "none"
    found = EXAMPLE_RE.search(text)
    if found:
        example_id, difficulty = found.group(1), float(found.group(2))
    else:  # an unknown prompt: derive a stable difficulty from its text
        example_id = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
        difficulty = unit_hash("difficulty", example_id)
    margin = quality + (2 * unit_hash(marker, example_id) - 1) * noise - difficulty
    constraint = 1 + int(unit_hash("constraint", example_id) * 3)
    if margin >= 0:
        return "ANSWER: pass"
    if margin >= -partial_band:
        return f"ANSWER: partial (constraint {constraint} only partly met)"
    return f"ANSWER: fail (missed constraint {constraint})"


class ContentModel(Protocol):
    """Decides the text of a simulated answer (the latency model decides *when*)."""

    def respond(
        self,
        messages: Sequence[Mapping[str, object]],
        stage: str,
        rng: random.Random,
        *,
        truncated: bool = False,
    ) -> str: ...


StageGuess = Callable[[Sequence[Mapping[str, object]]], str]


def no_guess(messages: Sequence[Mapping[str, object]]) -> str:
    """The fallback of a workload that cannot tell stages apart: the default stage."""
    return ""


@dataclass(frozen=True)
class SimWorkload:
    """What one workflow's requests look like to the serving simulator.

    ``lengths`` maps stage names (``ChatRequest.stage``, over HTTP the ``X-Flashevolve-Stage``
    header) to output-length distributions; ``default_length`` serves every other stage.
    ``guess_stage`` is used only for requests that name no stage.  Answers of
    ``padded_stages`` are padded with filler to their sampled length.
    """

    name: str
    content: ContentModel
    lengths: Mapping[str, LengthDist]
    default_length: LengthDist
    guess_stage: StageGuess = no_guess
    padded_stages: frozenset[str] = field(default_factory=frozenset)

    def stage_of(self, request: ChatRequest) -> str:
        return request.stage or self.guess_stage(request.messages)

    def length_for(self, stage: str) -> LengthDist:
        return self.lengths.get(stage, self.default_length)


#: Workloads registered by name (a workflow's own is found through the workflow registry).
WORKLOADS: dict[str, SimWorkload] = {}


def register_workload(workload: SimWorkload) -> SimWorkload:
    WORKLOADS[workload.name] = workload
    return workload


def get_workload(workload: str | SimWorkload | None = None) -> SimWorkload:
    """A workload by name (``None``: GEPA's, the default), or the given one unchanged.

    A name not registered here is looked up in the workflow registry: ``"ace"`` is the ACE
    workflow's own workload (``Workflow.sim_workload()``)."""
    if isinstance(workload, SimWorkload):
        return workload
    name = workload or "gepa"
    if name not in WORKLOADS:
        from flashevolve.workflows.base import sim_workload_of

        register_workload(sim_workload_of(name))
    return WORKLOADS[name]


# -- the simulated task -------------------------------------------------------------------------


def _metric(example: Example, output: str) -> MetricResult:
    found = ANSWER_RE.search(output)
    verdict = found.group(1).lower() if found else ""
    # the detail is the rest of the answer's first line (filler follows on later lines)
    detail = output[found.end() :].split("\n", 1)[0].strip(" ()") if found else ""
    if verdict == "pass":
        return MetricResult(1.0, "Correct: the answer met every constraint.")
    if verdict == "partial":
        return MetricResult(
            0.5, f"Partly correct: {detail}. The instruction should say how to handle this case."
        )
    if verdict in ("fail", "incomplete"):
        return MetricResult(0.0, f"Wrong: {detail}. The instruction did not prevent this.")
    return MetricResult(0.0, "No 'ANSWER:' line found in the output.")


DEFAULT_INSTRUCTION = "Answer the request and follow every stated constraint."


class SimulatedTask(PromptTask):
    """A stand-in task for the simulator (a workload model, not a benchmark).

    Difficulties are uniform in [0.05, 0.95], drawn from ``seed``; the seed artifact's latent
    quality is ``seed_quality``.  Each example's request text is padded with filler to a length
    drawn uniformly from ``prompt_tokens`` (IFBench-style requests are a few sentences to a
    paragraph).  Scores: pass 1, partial 0.5, fail 0.
    """

    def __init__(
        self,
        n_train: int = 100,
        n_val: int = 50,
        n_test: int = 0,
        seed: int = 0,
        *,
        seed_quality: float = 0.30,
        max_tokens: int | None = 8192,
        prompt_tokens: tuple[int, int] = (60, 240),
    ) -> None:
        rng = random.Random(f"sim-task:{seed}")
        lo, hi = prompt_tokens

        def split(prefix: str, n: int) -> list[Example]:
            out = []
            for i in range(n):
                d = 0.05 + 0.9 * rng.random()
                ex_id = f"{prefix}-{i}"
                head = (
                    f"[sim-example id={ex_id} difficulty={d:.3f}]\n"
                    f"Request {ex_id}: write the reply this user asked for and satisfy "
                    f"constraints 1-3 stated in the request."
                )
                size = lo + int((hi - lo) * unit_hash("prompt-size", seed, ex_id))
                prompt = pad_to_tokens(head, size)
                out.append(Example(ex_id, {"prompt": prompt}, meta={"difficulty": d}))
            return out

        seed_text = f"{DEFAULT_INSTRUCTION}\n{quality_marker(seed_quality)}"
        super().__init__(
            "simulated",
            train=split("train", n_train),
            val=split("val", n_val),
            test=split("test", n_test),
            seed={"instruction": seed_text},
            metric=_metric,
            description=(
                "A simulated workload for the serving simulator: answers pass or fail "
                "depending on a hidden quality of the instruction and a hidden difficulty "
                "of each request. Improve the instruction so more requests pass."
            ),
            max_tokens=max_tokens,
            temperature=0.0,
        )
