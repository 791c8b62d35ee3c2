"""Verifiable instruction constraints for the built-in ``ifeval-lite`` task.

Each constraint is a small pydantic model (so a dataset file is validated when it is loaded)
with two methods: ``instruction()`` renders the sentence a prompt uses to ask for it, and
``check(text)`` returns a :class:`Check` -- pass/fail plus one sentence saying what was
expected and what was seen.  The sentence is what the reflection model reads, so it names the
concrete offending thing (the first uppercase word, the counted bullets...) rather than only
"failed".  Checkers are pure Python and deterministic: no NLTK, no network.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


@dataclass(frozen=True, slots=True)
class Check:
    passed: bool
    feedback: str  # one sentence: what was expected, what was seen


_WORD = re.compile(r"[A-Za-z0-9']+")
_BULLET = re.compile(r"^\s*[-*] ")
_PLACEHOLDER = re.compile(r"\[[^\[\]\n]+\]")
_TITLE = re.compile(r"<<([^<>\n]+)>>")


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _quote(text: str, limit: int = 40) -> str:
    """A short, single-line excerpt for feedback sentences."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _contains_word(text: str, word: str) -> int:
    """Occurrences of ``word`` (or a phrase) as whole words, ignoring case."""
    return len(re.findall(rf"(?<![\w]){re.escape(word)}(?![\w])", text, flags=re.IGNORECASE))


def split_sentences(text: str) -> list[str]:
    """Sentences end at ., ! or ? followed by space/end; bullets and lines also end one.

    Deliberately simple (no abbreviation list) so the rule is easy to state in feedback.
    """
    pieces: list[str] = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip()
        if not line:
            continue
        pieces.extend(p for p in re.split(r"(?<=[.!?])\s+", line) if _words(p))
    return pieces


def split_paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _strip_fences(text: str) -> str:
    stripped = text.strip()
    match = re.fullmatch(r"```[A-Za-z]*\s*\n?(.*?)\n?```", stripped, flags=re.DOTALL)
    return match.group(1).strip() if match else stripped


class _Base(BaseModel, ABC):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @abstractmethod
    def instruction(self) -> str:
        """The sentence appended to a prompt that states this constraint."""

    @abstractmethod
    def check(self, text: str) -> Check:
        """Whether ``text`` meets the constraint, with one sentence of feedback."""


class Lowercase(_Base):
    type: Literal["lowercase"]

    def instruction(self) -> str:
        return "Write your whole answer in lowercase letters only, with no capital letters."

    def check(self, text: str) -> Check:
        bad = [w for w in _words(text) if any(c.isupper() for c in w)]
        if not text.strip():
            return Check(False, "Expected a lowercase answer, but the answer was empty.")
        if bad:
            return Check(
                False,
                f"Expected no capital letters, but saw {len(bad)} word(s) "
                f"with capitals, first {bad[0]!r}.",
            )
        return Check(True, "Expected no capital letters and saw none.")


class Uppercase(_Base):
    type: Literal["uppercase"]

    def instruction(self) -> str:
        return "Write your whole answer in CAPITAL LETTERS only."

    def check(self, text: str) -> Check:
        bad = [w for w in _words(text) if any(c.islower() for c in w)]
        if not text.strip():
            return Check(False, "Expected an all-caps answer, but the answer was empty.")
        if bad:
            return Check(
                False,
                f"Expected only capital letters, but saw {len(bad)} word(s) "
                f"with lowercase letters, first {bad[0]!r}.",
            )
        return Check(True, "Expected only capital letters and saw no lowercase letters.")


class IncludeKeywords(_Base):
    type: Literal["include_keywords"]
    keywords: list[str] = Field(min_length=1)

    def instruction(self) -> str:
        listed = ", ".join(repr(k) for k in self.keywords)
        plural = "words" if len(self.keywords) > 1 else "word"
        return f"Include the {plural} {listed} in your answer."

    def check(self, text: str) -> Check:
        missing = [k for k in self.keywords if not _contains_word(text, k)]
        if missing:
            return Check(
                False, f"Expected the keyword(s) {self.keywords}, but {missing} did not appear."
            )
        return Check(True, f"Expected the keyword(s) {self.keywords} and all appeared.")


class ForbiddenWords(_Base):
    type: Literal["forbidden_words"]
    words: list[str] = Field(min_length=1)

    def instruction(self) -> str:
        listed = ", ".join(repr(w) for w in self.words)
        return f"Do not use the word(s) {listed}."

    def check(self, text: str) -> Check:
        used = [w for w in self.words if _contains_word(text, w)]
        if used:
            return Check(False, f"Expected none of {self.words}, but the answer used {used}.")
        return Check(True, f"Expected none of {self.words} and none appeared.")


class WordCount(_Base):
    type: Literal["word_count"]
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> WordCount:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("'min' must not exceed 'max'")
        return self

    def _range(self) -> str:
        if self.min is not None and self.max is not None:
            return f"between {self.min} and {self.max} words"
        if self.min is not None:
            return f"at least {self.min} words"
        return f"at most {self.max} words"

    def instruction(self) -> str:
        return f"Your answer must be {self._range()} long."

    def check(self, text: str) -> Check:
        n = len(_words(text))
        ok = (self.min is None or n >= self.min) and (self.max is None or n <= self.max)
        return Check(ok, f"Expected {self._range()}, and the answer had {n}.")


class BulletCount(_Base):
    type: Literal["bullet_count"]
    n: int = Field(ge=1)

    def instruction(self) -> str:
        return (
            f"Answer with exactly {self.n} bullet points, each on its own line starting with '- '."
        )

    def check(self, text: str) -> Check:
        n = sum(1 for line in text.splitlines() if _BULLET.match(line))
        return Check(
            n == self.n,
            f"Expected exactly {self.n} bullet lines starting with '- ' or '* ', and counted {n}.",
        )


class ParagraphCount(_Base):
    type: Literal["paragraph_count"]
    n: int = Field(ge=1)

    def instruction(self) -> str:
        return f"Write exactly {self.n} paragraphs separated by a blank line."

    def check(self, text: str) -> Check:
        n = len(split_paragraphs(text))
        return Check(
            n == self.n,
            f"Expected exactly {self.n} paragraphs separated by blank lines, and counted {n}.",
        )


class EndWith(_Base):
    type: Literal["end_with"]
    phrase: str = Field(min_length=1)

    def instruction(self) -> str:
        return f"End your answer with the exact phrase {self.phrase!r}, with nothing after it."

    def check(self, text: str) -> Check:
        tail = text.rstrip()
        if tail.endswith(self.phrase):
            return Check(True, f"Expected the answer to end with {self.phrase!r}, and it did.")
        return Check(
            False,
            f"Expected the answer to end with {self.phrase!r}, but it ended "
            f"with {_quote(tail[-len(self.phrase) - 10 :])}.",
        )


class StartWith(_Base):
    type: Literal["start_with"]
    phrase: str = Field(min_length=1)

    def instruction(self) -> str:
        return f"Begin your answer with the exact words {self.phrase!r}."

    def check(self, text: str) -> Check:
        head = text.lstrip()
        if head.startswith(self.phrase):
            return Check(True, f"Expected the answer to start with {self.phrase!r}, and it did.")
        return Check(
            False,
            f"Expected the answer to start with {self.phrase!r}, but it "
            f"started with {_quote(head[: len(self.phrase) + 10])}.",
        )


class Quoted(_Base):
    type: Literal["quoted"]

    def instruction(self) -> str:
        return "Wrap your entire answer in double quotation marks."

    def check(self, text: str) -> Check:
        s = text.strip()
        if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
            return Check(True, "Expected the whole answer inside double quotes, and it was.")
        return Check(
            False,
            f"Expected the whole answer to start and end with a double quote "
            f'("), but it started with {s[:1]!r} and ended with {s[-1:]!r}.',
        )


class Title(_Base):
    type: Literal["title"]

    def instruction(self) -> str:
        return "Give your answer a title wrapped in double angle brackets, like <<my title>>."

    def check(self, text: str) -> Check:
        match = _TITLE.search(text)
        if match and match.group(1).strip():
            return Check(True, f"Expected a title in <<...>>, and found <<{match.group(1)}>>.")
        return Check(
            False,
            "Expected a title wrapped in double angle brackets like <<title>>, but found none.",
        )


class JsonFormat(_Base):
    type: Literal["json"]

    def instruction(self) -> str:
        return "Format your entire answer as valid JSON, with no text before or after it."

    def check(self, text: str) -> Check:
        body = _strip_fences(text)
        try:
            json.loads(body)
        except json.JSONDecodeError as err:
            return Check(
                False,
                f"Expected the whole answer to be valid JSON, but parsing failed "
                f"at line {err.lineno} column {err.colno}: {err.msg}.",
            )
        return Check(True, "Expected the whole answer to be valid JSON, and it parsed.")


class NoCommas(_Base):
    type: Literal["no_commas"]

    def instruction(self) -> str:
        return "Do not use any commas in your answer."

    def check(self, text: str) -> Check:
        n = text.count(",")
        if n:
            at = text.index(",")
            return Check(
                False,
                f"Expected no commas, but saw {n}, first near "
                f"{_quote(text[max(0, at - 15) : at + 5])}.",
            )
        return Check(True, "Expected no commas and saw none.")


class MaxSentences(_Base):
    type: Literal["max_sentences"]
    n: int = Field(ge=1)

    def instruction(self) -> str:
        unit = "sentence" if self.n == 1 else "sentences"
        return f"Use at most {self.n} {unit}."

    def check(self, text: str) -> Check:
        n = len(split_sentences(text))
        return Check(
            n <= self.n and n > 0, f"Expected between 1 and {self.n} sentence(s), and counted {n}."
        )


class Placeholders(_Base):
    type: Literal["placeholders"]
    min: int = Field(ge=1)

    def instruction(self) -> str:
        return f"Include at least {self.min} placeholder(s) in square brackets, such as [name]."

    def check(self, text: str) -> Check:
        found = _PLACEHOLDER.findall(text)
        return Check(
            len(found) >= self.min,
            f"Expected at least {self.min} square-bracket "
            f"placeholder(s) like [name], and found "
            f"{len(found)}.",
        )


class RepeatRequest(_Base):
    type: Literal["repeat_request"]
    text: str = Field(min_length=1)

    def instruction(self) -> str:
        return (
            "First repeat the request above word for word without changing anything, "
            "then give your answer."
        )

    def check(self, text: str) -> Check:
        want = " ".join(self.text.split())
        got = " ".join(text.split())
        if got.startswith(want):
            return Check(True, "Expected the answer to begin by repeating the request, and it did.")
        return Check(
            False,
            f"Expected the answer to begin with the request {_quote(want)}, "
            f"but it began with {_quote(got[: len(want)])}.",
        )


class KeywordFrequency(_Base):
    type: Literal["keyword_frequency"]
    word: str = Field(min_length=1)
    min: int = Field(ge=1)

    def instruction(self) -> str:
        return f"Use the word {self.word!r} at least {self.min} times."

    def check(self, text: str) -> Check:
        n = _contains_word(text, self.word)
        return Check(
            n >= self.min, f"Expected {self.word!r} at least {self.min} times, and counted {n}."
        )


class Postscript(_Base):
    type: Literal["postscript"]
    marker: str = "P.S."

    def instruction(self) -> str:
        return f"At the end, add a postscript line starting with {self.marker!r}."

    def check(self, text: str) -> Check:
        has = any(line.strip().startswith(self.marker) for line in text.splitlines())
        if has:
            return Check(True, f"Expected a line starting with {self.marker!r}, and found one.")
        return Check(
            False,
            f"Expected a postscript line starting with {self.marker!r}, but "
            f"no line started with it.",
        )


Constraint = Annotated[
    Lowercase
    | Uppercase
    | IncludeKeywords
    | ForbiddenWords
    | WordCount
    | BulletCount
    | ParagraphCount
    | EndWith
    | StartWith
    | Quoted
    | Title
    | JsonFormat
    | NoCommas
    | MaxSentences
    | Placeholders
    | RepeatRequest
    | KeywordFrequency
    | Postscript,
    Field(discriminator="type"),
]

CONSTRAINT_TYPES: tuple[str, ...] = (
    "lowercase", "uppercase", "include_keywords", "forbidden_words", "word_count",
    "bullet_count", "paragraph_count", "end_with", "start_with", "quoted", "title", "json",
    "no_commas", "max_sentences", "placeholders", "repeat_request", "keyword_frequency",
    "postscript",
)  # fmt: skip

_ADAPTER: TypeAdapter[list[Constraint]] = TypeAdapter(list[Constraint])


def parse_constraints(raw: Sequence[dict[str, Any]]) -> list[Constraint]:
    """Validate raw dicts into constraint models (raises pydantic ``ValidationError``)."""
    return _ADAPTER.validate_python(list(raw))


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float  # fraction of constraints satisfied
    feedback: str  # one line per constraint
    checks: tuple[tuple[str, Check], ...]


def evaluate(constraints: Iterable[Constraint], text: str) -> Verdict:
    """Run every checker; partial credit so evolution sees a gradient, not a cliff."""
    results = tuple((c.type, c.check(text)) for c in constraints)
    if not results:
        return Verdict(1.0, "No constraints to check.", ())
    score = sum(check.passed for _, check in results) / len(results)
    lines = [f"{'PASS' if ch.passed else 'FAIL'} {kind}: {ch.feedback}" for kind, ch in results]
    return Verdict(score, "\n".join(lines), results)
