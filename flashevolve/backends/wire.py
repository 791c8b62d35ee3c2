"""OpenAI's chat-completions wire format, written once: what flashevolve's server sends.

The plain answer body, the streamed chunks, the usage record and the error body are built here
and nowhere else (the server, its streaming path and the fault injector all use them), so the
shapes cannot drift apart.
"""

from __future__ import annotations

from typing import Any

#: Request header naming the pipeline stage that sent a request ("rollout", "propose", ...).
#: Our own servers use it to model output lengths; other servers ignore it.
STAGE_HEADER = "X-Flashevolve-Stage"


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for an HTTP status."""
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(
    status: int,
    message: str,
    *,
    kind: str | None = None,
    code: str | int | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """An error in OpenAI's shape, so official clients raise their usual exceptions.

    ``code`` defaults to ``rate_limit_exceeded`` for a 429 and to the status otherwise (vLLM
    puts the HTTP status it means there, which is how a client reads an error sent inside a
    stream that began with HTTP 200).
    """
    if code is None:
        code = "rate_limit_exceeded" if status == 429 else status
    return {
        "error": {
            "message": message,
            "type": kind or error_type(status),
            "param": param,
            "code": code,
        }
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    rid: str,
    model: str,
    text: str | None,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A whole (non-streamed) ``chat.completion``."""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": 0,  # a test/simulator server: no wall timestamp on purpose
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk_body(
    rid: str,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    *,
    include_usage: bool = False,
) -> dict[str, Any]:
    """One streamed ``chat.completion.chunk`` with a single choice."""
    body: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if include_usage:  # as OpenAI does: null on every chunk but the last
        body["usage"] = None
    return body


def usage_chunk(rid: str, model: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last chunk of a stream that asked for usage: no choices, the token counts."""
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }
