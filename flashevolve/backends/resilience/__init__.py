"""How flashevolve's clients hold when an endpoint misbehaves: deadlines from observed speed,
hedged stragglers, checked answers, capped retries that respect ``Retry-After``, and a circuit
breaker per endpoint.  See docs/reliability.md."""

from __future__ import annotations

from flashevolve.backends.resilience.caller import CallerStats, ResilientCaller
from flashevolve.backends.resilience.settings import ResilienceSettings, resilience_settings

__all__ = ["CallerStats", "ResilienceSettings", "ResilientCaller", "resilience_settings"]
