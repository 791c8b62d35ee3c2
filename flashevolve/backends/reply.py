"""What a responder gives flashevolve's server: a :class:`Reply`, and the :class:`Responder`
Protocol.  On their own so that the streaming module and the responders both import them
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flashevolve.backends.base import ChatRequest


@dataclass(slots=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


class Responder(Protocol):
    """Answers requests.  It may also have ``respond_stream(request)``: an async iterator of text
    pieces paced as they would be generated, ending with the :class:`Reply` (used for
    ``stream=true``; without it the server streams the whole answer once ``respond`` returns)."""

    model: str

    async def respond(self, request: ChatRequest) -> Reply:
        """Answer one request; raise ``LLMError(status=...)`` to answer an HTTP error."""
        ...
