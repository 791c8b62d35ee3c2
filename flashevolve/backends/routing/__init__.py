"""The parts of :mod:`flashevolve.backends.router`: settings and endpoint lists
(:mod:`.settings`), an endpoint's health and load (:mod:`.endpoint`), and the choice of endpoint
(:mod:`.choice`).  docs/scale-out.md explains how to use them."""

from __future__ import annotations

from flashevolve.backends.routing.settings import (
    EndpointsFile,
    EndpointSpec,
    RouterSettings,
    parse_endpoints,
    router_settings,
)

__all__ = ["EndpointSpec", "EndpointsFile", "RouterSettings", "parse_endpoints", "router_settings"]
