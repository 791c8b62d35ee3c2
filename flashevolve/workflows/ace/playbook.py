"""The ACE playbook: sections of bullets, rendered as text and parsed back exactly.

Text form (the one component of a playbook artifact)::

    ## STRATEGIES & INSIGHTS
    [str-00001] helpful=2 harmful=0 :: Compute margins on revenue, not on cost.
    [str-00004] helpful=0 harmful=0 :: ...

    ## COMMON MISTAKES TO AVOID

Sections are ``## NAME`` headers separated by one blank line; a section may be empty.  A bullet
is one line ``[id] helpful=H harmful=X :: text`` (the official ACE format): its id is stable for
its life, ``helpful``/``harmful`` count how often reflections tagged it so, and its text is one
line without surrounding whitespace (:func:`clean_text` makes any text so).  ``render`` and
``parse`` are exact inverses on canonical text: ``parse(render(p)) == p`` for every playbook and
``render(parse(t)) == t`` for every text ``render`` can produce.

Bullet ids are ``<slug>-<nnnnn>``: a short slug of the section and a number from one counter that
only grows (kept in the workflow's state), so an id is never reused after a DELETE or MERGE.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

#: The official ACE code starts from empty sections like these; ours are named in our own words.
DEFAULT_SECTIONS: tuple[tuple[str, str], ...] = (
    ("STRATEGIES & INSIGHTS", "str"),
    ("FORMULAS & CALCULATIONS", "calc"),
    ("COMMON MISTAKES TO AVOID", "err"),
    ("PROBLEM-SOLVING HEURISTICS", "heur"),
    ("CONTEXT CLUES & INDICATORS", "ctx"),
    ("OTHERS", "misc"),
)
#: Where an ADD to a section the playbook does not have goes (as the official code does).
FALLBACK_SECTION = "OTHERS"

_BULLET_RE = re.compile(r"^\[([^\[\]\s]+)\] helpful=(\d+) harmful=(\d+) :: (\S(?:.*\S)?)$")
_HEADER_RE = re.compile(r"^## (\S(?:.*\S)?)$")
_WORD_RE = re.compile(r"\w+")


class PlaybookFormatError(ValueError):
    """A playbook text that does not follow the format; names the line and the problem."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"playbook line {line}: {problem}")
        self.line, self.problem = line, problem


def clean_text(text: object) -> str:
    """One line, single spaces, no surrounding whitespace: what a bullet's text may be."""
    return " ".join(str(text).split())


def section_key(name: str) -> str:
    """How section names are matched: case, ``&``/``and``, spaces and underscores alike."""
    words = re.findall(r"[a-z0-9]+", name.lower().replace("&", " and "))
    return "_".join(words)


def section_slug(name: str) -> str:
    """The id prefix of a section: the default sections' own slugs, else the initials of its
    words (up to 4) or the first 4 letters of a one-word name."""
    key = section_key(name)
    for default, slug in DEFAULT_SECTIONS:
        if section_key(default) == key:
            return slug
    words = [w for w in key.split("_") if w and w != "and"]
    if not words:
        return "sec"
    if len(words) == 1:
        return words[0][:4]
    return "".join(w[0] for w in words[:4])


@lru_cache(maxsize=8192)
def token_set(text: str) -> frozenset[str]:
    return frozenset(w.lower() for w in _WORD_RE.findall(text))


def jaccard(ta: frozenset[str], tb: frozenset[str]) -> float:
    if not ta and not tb:
        return 1.0
    return len(ta & tb) / len(ta | tb)


def similarity(a: str, b: str) -> float:
    """Token-set Jaccard similarity in [0, 1] (the default grow-and-refine measure)."""
    return jaccard(token_set(a), token_set(b))


@dataclass(frozen=True, slots=True)
class Bullet:
    id: str
    text: str
    helpful: int = 0
    harmful: int = 0

    def render(self) -> str:
        return f"[{self.id}] helpful={self.helpful} harmful={self.harmful} :: {self.text}"


@dataclass(slots=True)
class Playbook:
    """Ordered sections of bullets (a working copy: the workflow mutates a :meth:`copy`)."""

    sections: dict[str, list[Bullet]] = field(default_factory=dict)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def empty(cls, sections: Sequence[str] | None = None) -> Playbook:
        names = list(sections) if sections is not None else [n for n, _ in DEFAULT_SECTIONS]
        for name in names:
            if clean_text(name) != name or not name or name.startswith("#"):
                raise ValueError(f"section name {name!r} must be one trimmed line")
        return cls({name: [] for name in names})

    def copy(self) -> Playbook:
        return Playbook({name: list(bullets) for name, bullets in self.sections.items()})

    # -- text ------------------------------------------------------------------------------------
    def render(self) -> str:
        blocks = []
        for name, bullets in self.sections.items():
            blocks.append("\n".join([f"## {name}", *(b.render() for b in bullets)]))
        return "\n\n".join(blocks)

    @classmethod
    def parse(cls, text: str, *, strict: bool = True) -> Playbook:
        """The playbook a text renders; ``strict=False`` also takes hand-written playbooks
        (extra blank lines, trailing spaces) but never guesses at a malformed bullet line."""
        sections: dict[str, list[Bullet]] = {}
        current: list[Bullet] | None = None
        seen: dict[str, int] = {}
        lines = text.split("\n")
        for number, raw in enumerate(lines, start=1):
            line = raw if strict else raw.strip()
            if not line:
                if strict and not _blank_allowed(lines, number - 1):
                    raise PlaybookFormatError(number, "a blank line belongs only between sections")
                continue
            header = _HEADER_RE.match(line)
            if header:
                name = header.group(1)
                if name in sections:
                    raise PlaybookFormatError(number, f"section {name!r} appears twice")
                if strict and number > 1 and lines[number - 2] != "":
                    raise PlaybookFormatError(number, "a section header must follow a blank line")
                current = sections[name] = []
                continue
            bullet = _BULLET_RE.match(line)
            if bullet is None:
                raise PlaybookFormatError(
                    number,
                    f"expected '## SECTION' or '[id] helpful=N harmful=N :: text', got {line[:60]!r}",
                )
            if current is None:
                raise PlaybookFormatError(number, "a bullet before the first section header")
            bid = bullet.group(1)
            if bid in seen:
                raise PlaybookFormatError(number, f"bullet id {bid} repeats line {seen[bid]}")
            seen[bid] = number
            current.append(Bullet(bid, bullet.group(4), int(bullet.group(2)), int(bullet.group(3))))
        if not sections:
            raise PlaybookFormatError(1, "no section header ('## NAME') found")
        return cls(sections)

    # -- reading -------------------------------------------------------------------------------
    def bullets(self) -> Iterator[tuple[str, Bullet]]:
        for name, bullets in self.sections.items():
            for b in bullets:
                yield name, b

    def ids(self) -> list[str]:
        return [b.id for _, b in self.bullets()]

    def get(self, bullet_id: str) -> Bullet | None:
        for _, b in self.bullets():
            if b.id == bullet_id:
                return b
        return None

    def section_of(self, bullet_id: str) -> str | None:
        for name, b in self.bullets():
            if b.id == bullet_id:
                return name
        return None

    def __len__(self) -> int:
        return sum(len(b) for b in self.sections.values())

    def resolve_section(self, name: str) -> str | None:
        """The playbook's own spelling of a section name, matched loosely (None if absent)."""
        key = section_key(name)
        for own in self.sections:
            if section_key(own) == key:
                return own
        return None

    def max_id_number(self) -> int:
        """The largest number in any bullet id (a parsed playbook's counter starts above it)."""
        numbers = [int(m.group(1)) for i in self.ids() if (m := re.search(r"(\d+)$", i))]
        return max(numbers, default=0)

    def most_similar(
        self, text: str, *, exclude: Sequence[str] = ()
    ) -> tuple[Bullet, float] | None:
        """The bullet whose text is most similar to ``text`` (ties: the earliest)."""
        best: tuple[Bullet, float] | None = None
        for _, b in self.bullets():
            if b.id in exclude:
                continue
            s = similarity(text, b.text)
            if best is None or s > best[1]:
                best = (b, s)
        return best

    def stats(self) -> dict[str, object]:
        """What the curator is told about the playbook's shape."""
        return {
            "bullets": len(self),
            "sections": {name: len(bs) for name, bs in self.sections.items()},
            "unused": sum(1 for _, b in self.bullets() if b.helpful + b.harmful == 0),
            "mostly_harmful": sum(
                1 for _, b in self.bullets() if b.harmful > 0 and b.harmful >= b.helpful
            ),
            "chars": len(self.render()),
        }

    # -- changing (used by operations.apply_operations on a copy) ------------------------------
    def replace(self, bullet_id: str, new: Bullet) -> None:
        for bullets in self.sections.values():
            for i, b in enumerate(bullets):
                if b.id == bullet_id:
                    bullets[i] = new
                    return
        raise KeyError(bullet_id)

    def remove(self, bullet_id: str) -> Bullet:
        for bullets in self.sections.values():
            for i, b in enumerate(bullets):
                if b.id == bullet_id:
                    return bullets.pop(i)
        raise KeyError(bullet_id)


def _blank_allowed(lines: list[str], index: int) -> bool:
    """Canonical text has exactly one blank line, and only right before a section header."""
    nxt = lines[index + 1] if index + 1 < len(lines) else None
    return index > 0 and lines[index - 1] != "" and nxt is not None and nxt.startswith("## ")
