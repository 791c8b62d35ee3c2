"""Which endpoint takes a request: the least loaded, unless prefix affinity prefers another that is
not much busier.

Load of an endpoint = this router's requests outstanding there + what the server says it holds
for others and has waiting (:meth:`Endpoint.others_load`, from ``/metrics``).  Equal loads go
round-robin, so a quiet start spreads instead of piling onto the first endpoint.

Affinity (``RouterSettings.affinity``) keys a request by the prefix the server can reuse:

- ``"system"``: the leading system message.  In GEPA every rollout and validation of one
  candidate carries the candidate's prompt as its system message (ACE: the playbook), and vLLM's
  automatic prefix caching reuses the KV blocks of an identical token prefix.  The key is
  exactly what the cache keys on -- a job id or item id would only correlate with it, and would
  split one candidate's validation sweep (its longest shared prefix) across servers.
- ``"prefix"``: the first ``affinity_chars`` characters of the prompt, for tasks that put
  everything in the user message.

Endpoints are ranked per key by rendezvous (highest-random-weight) hashing: each key has its own
order of endpoints, and an endpoint that goes down or comes back moves only the keys it ranks
first for.  The first endpoint in that order whose load is at most ``(1 + affinity_slack)`` x
the least load plus ``affinity_extra`` takes the request.  The bound is relative to the *least*
loaded endpoint, not to the mean (as in consistent hashing with bounded loads): with a mean
bound one hot prefix -- a validation sweep of one candidate -- would fill only the first
``n / (1 + slack)`` servers of its order and leave the rest idle; with this one every endpoint
takes work once the preferred ones are ahead by more than the slack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from flashevolve.backends.base import ChatRequest
from flashevolve.backends.routing.endpoint import Endpoint
from flashevolve.backends.routing.settings import RouterSettings

AffinityFn = Callable[[ChatRequest], str | None]


def affinity_function(settings: RouterSettings) -> AffinityFn | None:
    if settings.affinity == "system":
        return system_prefix
    if settings.affinity == "prefix":
        chars = settings.affinity_chars
        return lambda request: prompt_prefix(request, chars)
    return None


def system_prefix(request: ChatRequest) -> str | None:
    """The leading system message, if the prompt starts with one."""
    if request.messages and request.messages[0].get("role") == "system":
        return str(request.messages[0].get("content", ""))
    return None


def prompt_prefix(request: ChatRequest, chars: int) -> str | None:
    text = "\x1e".join(f"{m.get('role', '')}\x1f{m.get('content', '')}" for m in request.messages)
    return text[:chars] or None


def _weight(key: str, label: str) -> bytes:
    return hashlib.blake2b(f"{key}\x1f{label}".encode(), digest_size=8).digest()


def rendezvous(key: str, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """``endpoints`` in the key's own order of preference."""
    return sorted(endpoints, key=lambda e: _weight(key, e.label), reverse=True)


class Chooser:
    """Picks among endpoints with room; keeps the round-robin position for ties."""

    def __init__(self, settings: RouterSettings, affinity: AffinityFn | None) -> None:
        self.settings = settings
        self.affinity = affinity
        self._turn = 0

    def key(self, request: ChatRequest) -> str | None:
        return self.affinity(request) if self.affinity is not None else None

    def pick(
        self,
        candidates: Sequence[Endpoint],
        key: str | None,
        now: float,
        n_endpoints: int,
    ) -> tuple[Endpoint, str]:
        """(endpoint, why): ``why`` is ``"affinity"`` (the key's first choice),
        ``"affinity_overflow"`` (a later one: the first was too busy) or ``"least_loaded"``."""
        max_age = self.settings.check_every_s * self.settings.load_max_age_checks
        loads = {id(e): e.outstanding + e.others_load(now, max_age) for e in candidates}
        if key is not None:
            least = min(loads.values())
            bound = (1 + self.settings.affinity_slack) * least + self.settings.affinity_extra
            for rank, endpoint in enumerate(rendezvous(key, candidates)):
                if loads[id(endpoint)] <= bound:
                    return endpoint, "affinity" if rank == 0 else "affinity_overflow"
        self._turn += 1
        turn = self._turn
        best = min(candidates, key=lambda e: (loads[id(e)], (e.index - turn) % max(1, n_endpoints)))
        return best, "least_loaded"
