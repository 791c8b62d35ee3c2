"""Checking an answer before it is used: one set of rules for the HTTP client and the in-process
simulator, so garbage is caught the same way on both paths and never escapes as anything but an
``LLMError``.

- not JSON, or not a chat completion's shape -> ``malformed`` (retried);
- ``choices: []`` -> ``empty_choices`` (retried);
- content ``null`` without a tool call, a refusal or reasoning -> ``null_content`` (the caller
  retries it once, then keeps the empty answer);
- usage missing or impossible -> ``missing_usage`` / ``bad_usage``: kept, the counts estimated
  from the text (about four characters per token);
- another model's name -> ``wrong_model``: kept (a dated snapshot of the model asked for,
  ``gpt-4o-mini-2024-07-18`` for ``gpt-4o-mini``, is the same model).

Also here: reading ``Retry-After`` (seconds or an HTTP date).
"""

from __future__ import annotations

import email.utils
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flashevolve.backends.base import ChatResult, Fault, LLMError

#: A completion longer than this many times ``max_tokens`` (or than ``ABSURD_TOKENS``) is not
#: a count anyone meant.
USAGE_SLACK = 4
ABSURD_TOKENS = 10_000_000


def rough_tokens(text: str) -> int:
    """About four characters per token: the estimate used when a server gives no usage."""
    return math.ceil(len(text) / 4)


def prompt_tokens_estimate(messages: list[dict[str, str]]) -> int:
    return sum(rough_tokens(str(m.get("content", ""))) + 4 for m in messages)


def same_model(asked: str, answered: str) -> bool:
    return not asked or not answered or answered == asked or answered.startswith(asked + "-")


def malformed(endpoint: str, what: str) -> LLMError:
    return LLMError(
        f"{endpoint} sent a malformed answer: {what}", fault=Fault.MALFORMED, retryable=True
    )


def result_from_body(
    raw: bytes | str | Mapping[str, Any] | object,
    *,
    endpoint: str,
    model: str,
    latency_s: float,
    max_tokens: int | None,
    messages: list[dict[str, str]],
) -> ChatResult:
    """A checked :class:`ChatResult` from a plain (non-streamed) answer body: the raw bytes, or
    the JSON value already parsed."""
    body: Any = raw
    if isinstance(raw, bytes | bytearray | str):
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise malformed(endpoint, f"the body is not JSON ({err})") from None
    if not isinstance(body, Mapping):
        raise malformed(endpoint, f"the body is a JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list):
        raise malformed(endpoint, "it has no 'choices' list")
    if not choices:
        raise LLMError(
            f"{endpoint} answered with no choices", fault=Fault.EMPTY_CHOICES, retryable=True
        )
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, Mapping) else None
    if not isinstance(message, Mapping):
        raise malformed(endpoint, "choices[0] has no 'message' object")
    finish = choice.get("finish_reason") or "stop"
    if not isinstance(finish, str):
        raise malformed(endpoint, "choices[0].finish_reason is not a string")
    anomalies: list[str] = []
    content = message.get("content")
    if content is None:
        if not (message.get("tool_calls") or message.get("refusal") or _reasoning(message)):
            anomalies.append(Fault.NULL_CONTENT)
        content = ""
    elif not isinstance(content, str):
        raise malformed(endpoint, "choices[0].message.content is not a string")
    prompt, completion, usage_fault = checked_usage(body.get("usage"), max_tokens)
    if usage_fault is not None:
        anomalies.append(usage_fault)
        prompt, completion = prompt_tokens_estimate(messages), rough_tokens(content)
    answered = body.get("model")
    answered = answered if isinstance(answered, str) else ""
    if not same_model(model, answered):
        anomalies.append(Fault.WRONG_MODEL)
    return ChatResult(
        text=content,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_s=latency_s,
        finish_reason=finish,
        model=answered or model,
        anomalies=tuple(anomalies),
    )


def _reasoning(message: Mapping[str, Any]) -> bool:
    return bool(message.get("reasoning_content") or message.get("reasoning"))


def checked_usage(usage: Any, max_tokens: int | None) -> tuple[int, int, str | None]:
    """(prompt, completion, fault): the fault is ``missing_usage`` or ``bad_usage`` (then the
    counts are 0 and the caller estimates them)."""
    if usage is None:
        return 0, 0, Fault.MISSING_USAGE
    if not isinstance(usage, Mapping):
        return 0, 0, Fault.BAD_USAGE
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return 0, 0, Fault.BAD_USAGE
    total = usage.get("total_tokens")
    limit = ABSURD_TOKENS if not max_tokens else min(ABSURD_TOKENS, USAGE_SLACK * max_tokens + 16)
    if (
        completion > limit
        or prompt > ABSURD_TOKENS
        or (total is not None and total != prompt + completion)
    ):
        return 0, 0, Fault.BAD_USAGE
    return prompt, completion, None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """What ``Retry-After`` (or ``retry-after-ms``) asks for, in seconds; ``None`` if absent or
    unreadable.  An HTTP date is measured from the response's own ``Date`` header (the
    server's clock, so a skewed local clock does not matter), or from the local UTC time when
    the response has none."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    millis = lower.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    text = lower.get("retry-after")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    when = _http_date(text)
    if when is None:
        return None
    now = _http_date(lower.get("date", "")) or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def _http_date(text: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
