"""The router's settings and where its endpoints come from: a comma list of URLs or a small file.

Both are validated at the boundary (pydantic); a mistake is one ``ConfigError`` naming the field
or the line and how to fix it.

An endpoints file is either JSON::

    {"model": "Qwen/Qwen3-8B",
     "endpoints": [{"base_url": "http://gpu0:8000/v1", "max_concurrency": 64},
                   {"base_url": "http://gpu1:8000/v1"}],
     "router": {"affinity": "system"}}

(``model`` and ``router`` optional; ``endpoints`` may also be the whole file, a list), or plain
text, one endpoint per line with optional ``key=value`` options, ``#`` starting a comment::

    http://gpu0:8000/v1  max_concurrency=64
    http://gpu1:8000/v1
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flashevolve.errors import ConfigError


class RouterSettings(BaseModel):
    """How a :class:`~flashevolve.backends.router.Router` spreads and moves requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Prefix affinity: ``"none"``; ``"system"`` -- requests with the same leading system
    #: message go to the same endpoint (GEPA's candidate prompt, ACE's playbook: what vLLM's
    #: prefix cache can reuse); ``"prefix"`` -- the same first ``affinity_chars`` characters of
    #: the prompt, for tasks without a system message.  A callable ``request -> key | None``
    #: can be given to ``router()`` instead.
    affinity: Literal["none", "system", "prefix"] = "none"
    affinity_chars: int = Field(default=2048, ge=16)
    #: Affinity yields to balance: the preferred endpoint takes the request only while its load
    #: is at most ``(1 + affinity_slack) x`` the least load of the endpoints with room, plus
    #: ``affinity_extra`` requests (so under load every endpoint stays busy).
    affinity_slack: float = Field(default=0.25, ge=0)
    affinity_extra: int = Field(default=2, ge=0)
    #: Seconds (run clock) between health checks of each endpoint -- and between two looks at
    #: its ``/metrics`` load -- while requests are being routed.
    check_every_s: float = Field(default=2.0, gt=0)
    #: Consecutive failed attempts that take an endpoint out (a refused connection or an open
    #: circuit takes it out at once).
    down_after: int = Field(default=3, ge=1)
    #: A request that finds no usable endpoint waits for one to come back this long (run
    #: clock), then fails.
    give_up_s: float = Field(default=600.0, gt=0)
    #: A request moves to another endpoint when its endpoint's client is about to retry it
    #: (instead of waiting out the backoff there), at most this many times; after that its
    #: endpoint's own client retries it as usual.
    max_moves: int = Field(default=8, ge=0)
    #: Order of requests waiting for a free endpoint: arrival order, or ``request.priority``
    #: (lower first: later pipeline stages) as the client's own ``queue="priority"``.
    queue: Literal["fifo", "priority"] = "fifo"
    #: A server's own load from ``/metrics`` older than this many check periods is ignored.
    load_max_age_checks: int = Field(default=3, ge=1)


def router_settings(value: RouterSettings | dict[str, Any] | None = None) -> RouterSettings:
    if isinstance(value, RouterSettings):
        return value
    try:
        return RouterSettings.model_validate(dict(value or {}))
    except ValidationError as err:
        raise ConfigError("router settings: " + _problems(err)) from None


class EndpointSpec(BaseModel):
    """One OpenAI-compatible endpoint of a router (the client options of ``backends.openai``)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    max_concurrency: int | None = Field(default=None, ge=1)
    api_key_env: str | None = None
    stream: bool | None = None
    name: str | None = None  # a label for events; default: the base URL

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"{value!r} is not an http(s) URL; give the endpoint's base URL, "
                "e.g. http://127.0.0.1:8000/v1"
            )
        return value.rstrip("/")


class EndpointsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    endpoints: list[EndpointSpec] = Field(min_length=1)
    router: RouterSettings = Field(default_factory=RouterSettings)


def _problems(err: ValidationError) -> str:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "value"
        out.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(out)


def parse_endpoints(value: str | Path) -> EndpointsFile:
    """Endpoints from ``"URL1,URL2,..."`` (``--base-url``) or from a file (``--endpoints``):
    JSON or plain text as in the module docstring.  A path that does not exist is read as a
    comma list only when it looks like URLs."""
    text = str(value).strip()
    path = Path(text)
    if not text.startswith(("http://", "https://")):
        if not path.is_file():
            raise ConfigError(
                f"endpoints {text!r}: not a file, and not a comma list of http(s) URLs; give "
                "e.g. http://127.0.0.1:8000/v1,http://127.0.0.1:8001/v1 or a file of them"
            )
        return _read_file(path)
    urls = [u.strip() for u in text.split(",")]
    if any(not u for u in urls):
        raise ConfigError(f"endpoints {text!r}: an empty item in the comma list; remove it")
    return _validated({"endpoints": [{"base_url": u} for u in urls]}, "--base-url")


def _read_file(path: Path) -> EndpointsFile:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"endpoints file {path}: cannot read it ({err})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise ConfigError(f"endpoints file {path}: not valid JSON ({err})") from None
        if isinstance(data, list):
            data = {"endpoints": data}
        if not isinstance(data, dict):
            raise ConfigError(f"endpoints file {path}: expected a JSON object or list")
        data["endpoints"] = [
            {"base_url": e} if isinstance(e, str) else e for e in data.get("endpoints") or []
        ]
        return _validated(data, f"endpoints file {path}")
    return _validated({"endpoints": _text_lines(path, raw)}, f"endpoints file {path}")


def _text_lines(path: Path, raw: str) -> list[dict[str, Any]]:
    endpoints = []
    for number, line in enumerate(raw.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        entry: dict[str, Any] = {"base_url": words[0]}
        for word in words[1:]:
            key, sep, val = word.partition("=")
            if not sep or not val:
                raise ConfigError(
                    f"endpoints file {path}:{number}: {word!r} is not key=value "
                    "(e.g. max_concurrency=32)"
                )
            entry[key] = val
        try:
            EndpointSpec.model_validate(entry)
        except ValidationError as err:
            raise ConfigError(f"endpoints file {path}:{number}: {_problems(err)}") from None
        endpoints.append(entry)
    return endpoints


def _validated(data: dict[str, Any], where: str) -> EndpointsFile:
    try:
        parsed = EndpointsFile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{where}: {_problems(err)}") from None
    labels = [e.name or e.base_url for e in parsed.endpoints]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"{where}: endpoint {repeated[0]!r} is listed twice; list it once")
    return parsed
