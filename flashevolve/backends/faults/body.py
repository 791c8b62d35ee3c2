"""Broken answers, built one way for the HTTP server and the in-process simulator.

Given the correct answer body (:func:`flashevolve.backends.wire.completion_body`), these return
what a misbehaving server would send instead; the in-process simulator feeds the result through
the same answer check as the HTTP client, so both paths see the same garbage.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from flashevolve.backends.faults.spec import FaultKind

#: Kinds that change the answer's content (the others act on the connection or its timing).
BODY_KINDS = frozenset(
    {
        FaultKind.MALFORMED,
        FaultKind.EMPTY_CHOICES,
        FaultKind.MISSING_USAGE,
        FaultKind.ABSURD_USAGE,
        FaultKind.WRONG_MODEL,
        FaultKind.NULL_CONTENT,
    }
)

#: A usage record no server could mean: negative prompt, 10^12 completion tokens, a total that
#: is not the sum.
ABSURD_USAGE = {"prompt_tokens": -7, "completion_tokens": 10**12, "total_tokens": 3}


def impostor_model(model: str) -> str:
    return f"impostor/{model}"


def broken_body(kind: FaultKind, body: dict[str, Any]) -> dict[str, Any] | bytes:
    """``body`` (a whole chat completion) broken as ``kind`` says; bytes when it is no longer
    JSON at all."""
    if kind == FaultKind.MALFORMED:
        return garbage(json.dumps(body).encode())
    out = copy.deepcopy(body)
    if kind == FaultKind.EMPTY_CHOICES:
        out["choices"] = []
    elif kind == FaultKind.MISSING_USAGE:
        out.pop("usage", None)
    elif kind == FaultKind.ABSURD_USAGE:
        out["usage"] = dict(ABSURD_USAGE)
    elif kind == FaultKind.WRONG_MODEL:
        out["model"] = impostor_model(str(out.get("model", "")))
    elif kind == FaultKind.NULL_CONTENT:
        for choice in out.get("choices", []):
            choice["message"]["content"] = None
    else:
        raise ValueError(f"{kind} is not a body fault")
    return out


def garbage(data: bytes) -> bytes:
    """The first two thirds of a JSON document followed by what a broken proxy might append."""
    return data[: len(data) * 2 // 3] + b"\x00<html>upstream hiccup</html>"


def broken_chunk(kind: FaultKind, chunk: dict[str, Any]) -> dict[str, Any]:
    """One streamed chunk broken as ``kind`` says (kinds that act on every chunk)."""
    out = copy.deepcopy(chunk)
    if kind == FaultKind.EMPTY_CHOICES and out.get("choices"):
        out["choices"] = []
    elif kind == FaultKind.WRONG_MODEL and "model" in out:
        out["model"] = impostor_model(str(out["model"]))
    elif kind == FaultKind.NULL_CONTENT:
        for choice in out.get("choices", []):
            delta = choice.get("delta") or {}
            if "content" in delta:
                delta["content"] = None
    return out
