"""Text metrics for the file-loaded tasks: final-number match, SQuAD-style F1, labels, exact.

Each metric takes ``(example, output)`` and returns a :class:`MetricResult` whose feedback names
the gold answer and what was extracted from the output, so the reflection model sees why.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from flashevolve.tasks.base import Example, MetricResult

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_final_number(text: str) -> tuple[str | None, str]:
    """The last ``\\boxed{}`` content if any, else the last number in the text."""
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    where, scope = ("\\boxed{}", boxed[-1]) if boxed else ("the last number", text)
    numbers = _NUMBER.findall(scope)
    if numbers:
        return numbers[-1].replace(",", ""), where
    return (scope.strip() or None, where) if boxed else (None, where)


def _as_int(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number == int(number) else None


def aime_metric(example: Example, output: str) -> MetricResult:
    gold = str(example.reference).strip()
    got, where = extract_final_number(output)
    if got is None:
        return MetricResult(
            0.0,
            f"Expected the answer {gold}, but found no number in the "
            "output; end with the final integer, e.g. \\boxed{42}.",
        )
    gold_int, got_int = _as_int(gold), _as_int(got)
    ok = gold_int == got_int if gold_int is not None else gold == got
    verdict = "Correct" if ok else "Wrong"
    return MetricResult(
        float(ok),
        f"{verdict}: expected {gold}, got {got} (taken from {where}).",
        {"extracted": got},
    )


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and English articles, squeeze spaces (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def extract_answer(output: str) -> str:
    """Text after the last 'Answer:' marker, else the last non-empty line."""
    marked: list[str] = re.findall(r"answer\s*[:：]\s*(.+)", output, flags=re.IGNORECASE)
    if marked:
        return marked[-1].strip()
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def hotpot_metric(example: Example, output: str) -> MetricResult:
    gold = str(example.reference)
    got = extract_answer(output)
    em = float(normalize_answer(got) == normalize_answer(gold))
    f1 = max(em, token_f1(got, gold))
    feedback = (
        f"The gold answer is {gold!r}; the extracted answer was {got!r} "
        f"(exact match {int(em)}, token F1 {f1:.2f})."
    )
    return MetricResult(f1, feedback, {"em": em, "f1": f1, "extracted": got})


_LABEL = re.compile(r"not[\s_-]*supported|supported", flags=re.IGNORECASE)


def extract_label(output: str) -> str | None:
    found = _LABEL.findall(output)
    if not found:
        return None
    return "NOT_SUPPORTED" if found[-1].lower().startswith("not") else "SUPPORTED"


def hover_metric(example: Example, output: str) -> MetricResult:
    gold = str(example.reference)
    got = extract_label(output)
    if got is None:
        return MetricResult(
            0.0,
            f"Expected the label {gold}, but the output contained neither "
            "SUPPORTED nor NOT_SUPPORTED.",
        )
    ok = got == gold
    return MetricResult(
        float(ok),
        f"{'Correct' if ok else 'Wrong'}: expected {gold}, the output's final label was {got}.",
        {"extracted": got},
    )


def exact_metric(example: Example, output: str) -> MetricResult:
    gold = " ".join(str(example.reference).split()).rstrip(".").lower()
    candidates = [output, extract_answer(output)]
    ok = any(" ".join(c.split()).rstrip(".").lower() == gold for c in candidates)
    shown = extract_answer(output) or output.strip()
    return MetricResult(
        float(ok),
        f"{'Correct' if ok else 'Wrong'}: expected {str(example.reference)!r}, got {shown[:80]!r}.",
    )
