"""Load user task files (JSON list or JSONL) into :class:`PromptTask` objects.

Kinds: ``aime`` (problem -> integer answer), ``hotpotqa`` (question [+ context] -> short
answer, token F1), ``hover`` (claim -> SUPPORTED / NOT_SUPPORTED), ``humaneval`` (function
stub + tests, the completion is executed) and ``prompt`` (input -> exact answer).  Every row is
validated with pydantic when the file is read; any problem raises :class:`TaskFileError` naming
the file, the line, the field and the fix, before a single model call is spent.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flashevolve.errors import TaskFileError
from flashevolve.tasks.base import Example, MetricResult, PromptTask
from flashevolve.tasks.sandbox import CodeTask, code_sandbox, humaneval_metric
from flashevolve.tasks.scoring import aime_metric, exact_metric, hotpot_metric, hover_metric

# ---------------------------------------------------------------------------- reading files


def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, object) pairs from a JSONL file or a JSON file holding a list of objects."""
    source = Path(path)
    if not source.is_file():
        raise TaskFileError(str(source), None, None, "file not found; check the path")
    text = source.read_text(encoding="utf-8")
    if not text.strip():
        raise TaskFileError(str(source), None, None, "the file is empty; add one example per line")
    stripped = text.lstrip()
    is_list = stripped.startswith("[") and source.suffix.lower() != ".jsonl"
    records = _read_json_list(source, text) if is_list else _read_jsonl(source, text)
    for line, obj in records:
        if not isinstance(obj, dict):
            raise TaskFileError(
                str(source), line, None, f"expected a JSON object {{...}}, got {type(obj).__name__}"
            )
    if not records:
        raise TaskFileError(str(source), None, None, "no examples found; add at least two")
    return records


def _read_jsonl(source: Path, text: str) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise TaskFileError(
                str(source),
                number,
                None,
                f"invalid JSON at column {err.colno}: {err.msg}; each line "
                "must be one complete JSON object",
            ) from None
    return out


def _read_json_list(source: Path, text: str) -> list[tuple[int, Any]]:
    """Decode item by item so each object keeps the line it starts on (for error messages)."""
    decoder = json.JSONDecoder()
    out: list[tuple[int, Any]] = []
    pos = text.index("[") + 1
    try:
        while True:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) and text[pos] == "]":
                return out
            obj, end = decoder.raw_decode(text, pos)
            out.append((text.count("\n", 0, pos) + 1, obj))
            pos = end
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) and text[pos] == ",":
                pos += 1
            elif pos >= len(text) or text[pos] != "]":
                raise json.JSONDecodeError("expected ',' or ']' after an item", text, pos)
    except json.JSONDecodeError as err:
        raise TaskFileError(
            str(source), err.lineno, None, f"invalid JSON at column {err.colno}: {err.msg}"
        ) from None


def pydantic_problem(err: ValidationError) -> tuple[str | None, str]:
    """The first validation error as (field, problem-with-fix)."""
    errors = err.errors()

    def split_loc(loc: tuple[Any, ...]) -> tuple[str | None, list[str]]:
        # pydantic adds the union member's type ('int', 'list[str]') to the location; those
        # are not fields the user can find in the file, so they become "expected" types.
        parts = [str(p) for p in loc]
        tags = [p for p in parts if _TYPE_TAG.match(p)]
        return ".".join(p for p in parts if not _TYPE_TAG.match(p)) or None, tags

    first = errors[0]
    field, _ = split_loc(first["loc"])
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if first["type"] == "missing":
        return field, "is required but missing; add it"
    if first["type"] == "extra_forbidden":
        return field, "is not a known field; remove it or check its spelling"
    expected = [
        tag for e in errors if split_loc(e["loc"])[0] == field for tag in split_loc(e["loc"])[1]
    ]
    if len(expected) > 1:
        return field, f"has the wrong type: expected {' or '.join(expected)} (got {shown})"
    return field, f"{first['msg']} (got {shown})"


_TYPE_TAG = re.compile(r"^(int|str|float|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\])$")


# ---------------------------------------------------------------------------- row schemas


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | int | None = None
    split: Literal["train", "val", "test"] | None = None


class AimeRow(_Row):
    problem: str = Field(min_length=1)
    answer: int | str


class HotpotRow(_Row):
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    context: str | list[Any] | None = None


class HoverRow(_Row):
    claim: str = Field(min_length=1)
    label: Literal["SUPPORTED", "NOT_SUPPORTED"]
    evidence: str | list[Any] | None = None

    @field_validator("label", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"[\s-]+", "_", value.strip()).upper()
        return value


class HumanEvalRow(_Row):
    task_id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    test: str = Field(min_length=1)
    entry_point: str = Field(min_length=1, pattern=r"^[A-Za-z_]\w*$")


class GenericRow(_Row):
    input: str | None = None
    prompt: str | None = None
    answer: str | int | float

    def text(self) -> str:
        return self.input if self.input is not None else (self.prompt or "")


# ---------------------------------------------------------------------------- kinds


def _context_text(value: str | list[Any] | None) -> str | None:
    """HotpotQA context arrives as a string, a list of strings or [title, sentences] pairs."""
    if value is None or isinstance(value, str):
        return value
    parts: list[str] = []
    for item in value:
        if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], list):
            parts.append(f"{item[0]}: {' '.join(map(str, item[1]))}")
        else:
            parts.append(str(item))
    return "\n".join(parts)


def _aime(row: AimeRow) -> tuple[dict[str, Any], Any, str | None]:
    return {"problem": row.problem}, str(row.answer), None


def _hotpot(row: HotpotRow) -> tuple[dict[str, Any], Any, str | None]:
    context = _context_text(row.context)
    inputs = {"question": row.question} | ({"context": context} if context else {})
    return inputs, row.answer, None


def _hover(row: HoverRow) -> tuple[dict[str, Any], Any, str | None]:
    evidence = _context_text(row.evidence)
    return {"claim": row.claim} | ({"evidence": evidence} if evidence else {}), row.label, None


def _humaneval(row: HumanEvalRow) -> tuple[dict[str, Any], Any, str | None]:
    reference = {"prompt": row.prompt, "test": row.test, "entry_point": row.entry_point}
    return {"prompt": row.prompt}, reference, row.task_id


def _generic(row: GenericRow) -> tuple[dict[str, Any], Any, str | None]:
    return {"prompt": row.text()}, str(row.answer), None


class _Kind:
    def __init__(
        self,
        schema: type[_Row],
        convert: Callable[[Any], tuple[dict[str, Any], Any, str | None]],
        metric: Callable[[Example, str], MetricResult],
        seed: str,
        description: str,
        max_tokens: int,
    ) -> None:
        self.schema, self.convert, self.metric = schema, convert, metric
        self.seed, self.description, self.max_tokens = seed, description, max_tokens


KINDS: dict[str, _Kind] = {
    "aime": _Kind(
        AimeRow,
        _aime,
        aime_metric,
        "Solve the math problem step by step. End with the final integer answer "
        "written as \\boxed{N}.",
        "Competition math problems with an integer answer; exact match on the final "
        "number (the last \\boxed{} or the last number in the output).",
        1024,
    ),
    "hotpotqa": _Kind(
        HotpotRow,
        _hotpot,
        hotpot_metric,
        "Answer the question using the context. Finish with one line 'Answer: <short answer>'.",
        "Multi-hop question answering; scored by token F1 against a short gold "
        "answer taken from the last 'Answer:' line.",
        256,
    ),
    "hover": _Kind(
        HoverRow,
        _hover,
        hover_metric,
        "Decide whether the claim is supported. Finish with one line "
        "'Answer: SUPPORTED' or 'Answer: NOT_SUPPORTED'.",
        "Claim verification; the last SUPPORTED/NOT_SUPPORTED in the output must "
        "match the gold label.",
        256,
    ),
    "humaneval": _Kind(
        HumanEvalRow,
        _humaneval,
        humaneval_metric,
        "Complete the Python function. Reply with the complete function in one "
        "```python code block and nothing else.",
        "Python function synthesis; the completion is run against unit tests in "
        "a subprocess (score 1 if every test passes).",
        512,
    ),
    "prompt": _Kind(
        GenericRow,
        _generic,
        exact_metric,
        "Answer the request. Put the final answer alone on the last line.",
        "Generic prompt/answer pairs scored by exact match (case and surrounding "
        "whitespace ignored).",
        256,
    ),
}
ALIASES = {"hotpot": "hotpotqa", "generic": "prompt", "code": "humaneval", "math": "aime"}


def detect_kind(row: Mapping[str, Any]) -> str | None:
    keys = set(row)
    if {"task_id", "prompt", "test", "entry_point"} <= keys:
        return "humaneval"
    if {"claim", "label"} <= keys:
        return "hover"
    if {"problem", "answer"} <= keys:
        return "aime"
    if {"question", "answer"} <= keys:
        return "hotpotqa"
    if "answer" in keys and keys & {"input", "prompt"}:
        return "prompt"
    return None


def _split(
    path: str,
    rows: list[tuple[int, _Row, Example]],
    seed: int,
    n_train: int | None,
    n_val: int | None,
) -> tuple[list[Example], list[Example], list[Example]]:
    marked = [line for line, row, _ in rows if row.split is not None]
    if marked:
        unmarked = [line for line, row, _ in rows if row.split is None]
        if unmarked:
            raise TaskFileError(
                path,
                unmarked[0],
                "split",
                "is missing here but set on other "
                "rows; give every row a split (train/val/test) or none",
            )
        parts: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
        for _, row, ex in rows:
            parts[row.split or "test"].append(ex)
        for name in ("train", "val"):
            if not parts[name]:
                raise TaskFileError(
                    path, None, "split", f"no row has split {name!r}; mark at least one row with it"
                )
        return parts["train"], parts["val"], parts["test"]
    examples = [ex for _, _, ex in rows]
    if len(examples) < 2:
        raise TaskFileError(
            path, None, None, "a task needs at least 2 examples (one train, one val); add more rows"
        )
    random.Random(seed).shuffle(examples)
    size = len(examples)
    k_train = n_train if n_train is not None else max(1, round(0.4 * size))
    k_val = n_val if n_val is not None else max(1, round(0.3 * size))
    if k_train < 1 or k_val < 1 or k_train + k_val > size:
        raise TaskFileError(
            path,
            None,
            None,
            f"n_train={k_train} and n_val={k_val} do not fit "
            f"{size} examples; lower them (each at least 1)",
        )
    return examples[:k_train], examples[k_train : k_train + k_val], examples[k_train + k_val :]


class TaskFileOptions(BaseModel):
    """How :func:`load_task_file` turns a file into a task (validated; unknown names refused)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    seed: int = 0  # the shuffle that splits rows without a ``split`` field
    n_train: int | None = Field(default=None, ge=1)  # default 40% of the rows
    n_val: int | None = Field(default=None, ge=1)  # default 30% of the rows
    instruction: str | None = None  # the seed instruction (default: the kind's)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    timeout_s: float = Field(default=10.0, gt=0)  # humaneval: per program
    #: humaneval runs model-written code: only where the sandbox isolates it, unless this is set
    allow_unsandboxed: bool = False


def load_task_file(path: str | Path, kind: str | None = None, **options: Any) -> PromptTask:
    """Read ``path`` as ``kind`` (detected from the first row's fields when None); ``options``
    are :class:`TaskFileOptions` (an unknown or bad one is a :class:`TaskFileError` naming it).

    Rows with a ``split`` field go to that split; otherwise a ``seed``-ed shuffle puts
    ``n_train`` (default 40%) in train, ``n_val`` (default 30%) in val and the rest in test.
    ``humaneval`` runs model-written code: it loads only where the sandbox has some isolation,
    unless ``allow_unsandboxed=True`` (raises :class:`~flashevolve.sandbox.SandboxRefused`).
    """
    where = str(path)
    try:
        opts = TaskFileOptions.model_validate(options)
    except ValidationError as err:
        field, problem = pydantic_problem(err)
        known = ", ".join(TaskFileOptions.model_fields)
        if err.errors()[0]["type"] == "extra_forbidden":
            raise TaskFileError(
                where, None, None, f"no option {field!r}; the options are: {known}"
            ) from None
        raise TaskFileError(where, None, field, problem) from None
    records = read_records(path)
    kind = _kind_of(where, records, kind)
    spec = KINDS[kind]
    rows = _examples(where, records, spec)
    train, val, test = _split(where, rows, opts.seed, opts.n_train, opts.n_val)
    task_cls = CodeTask if kind == "humaneval" else PromptTask
    metric = spec.metric
    if kind == "humaneval":
        code_sandbox(opts.timeout_s, allow_unsandboxed=opts.allow_unsandboxed).check()
        # a partial of a module-level function: it pickles, so a process or Ray executor
        # can run it without shipping the task
        metric = functools.partial(
            humaneval_metric, timeout_s=opts.timeout_s, allow_unsandboxed=opts.allow_unsandboxed
        )
    return task_cls(
        opts.name or f"{kind}:{Path(where).stem}",
        train=train,
        val=val,
        test=test,
        seed={"instruction": opts.instruction or spec.seed},
        metric=metric,
        description=spec.description,
        max_tokens=opts.max_tokens if opts.max_tokens is not None else spec.max_tokens,
        temperature=opts.temperature,
    )


def _kind_of(where: str, records: list[tuple[int, dict[str, Any]]], kind: str | None) -> str:
    """The task kind: as given (aliases allowed) or detected from the first row's fields."""
    if kind is None:
        kind = detect_kind(records[0][1])
        if kind is None:
            raise TaskFileError(
                where,
                records[0][0],
                None,
                f"cannot tell the task kind from fields {sorted(records[0][1])}; "
                f"pass kind= one of {sorted(KINDS)}",
            )
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise TaskFileError(
            where, None, None, f"unknown kind {kind!r}; choose one of {sorted(KINDS)}"
        )
    return kind


def _examples(
    where: str, records: list[tuple[int, dict[str, Any]]], spec: Any
) -> list[tuple[int, Any, Example]]:
    """Every row validated and converted, with a unique id (file:line named on any problem)."""
    rows: list[tuple[int, Any, Example]] = []
    seen: dict[str, int] = {}
    for index, (line, raw) in enumerate(records):
        try:
            row = spec.schema.model_validate(raw)
        except ValidationError as err:
            field, problem = pydantic_problem(err)
            raise TaskFileError(where, line, field, problem) from None
        if isinstance(row, GenericRow) and row.input is None and row.prompt is None:
            raise TaskFileError(where, line, "input", "is required (or 'prompt'); add it")
        inputs, reference, own_id = spec.convert(row)
        ex_id = str(row.id) if row.id is not None else own_id or f"{Path(where).stem}-{index}"
        if ex_id in seen:
            raise TaskFileError(
                where,
                line,
                "id",
                f"duplicate id {ex_id!r} (first on line {seen[ex_id]}); make ids unique",
            )
        seen[ex_id] = line
        rows.append((line, row, Example(ex_id, inputs, reference, {"line": line})))
    return rows


def kinds() -> Sequence[str]:
    return sorted(KINDS)
