"""Artifacts: immutable sets of named text components with a content-hash id and lineage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def content_id(components: Mapping[str, str]) -> str:
    """Stable id of a component set: the same texts always give the same id."""
    canonical = json.dumps(dict(sorted(components.items())), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Artifact:
    """One candidate: a prompt (GEPA), a playbook (ACE), harness code (Meta-Harness), ...

    ``version_stamp``/``frontier_stamp`` are the pool counters it was made against; ``origin``
    says how it came to be ("seed", "reflection", "patch", "merge").  The id depends on the
    component texts only, so two routes to the same text meet at one id.
    """

    components: Mapping[str, str]
    parents: tuple[str, ...] = ()
    version_stamp: int = 0
    frontier_stamp: int = 0
    origin: str = "seed"
    meta: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(init=False)

    def __post_init__(self) -> None:
        comps = {str(k): str(v) for k, v in dict(self.components).items()}
        if not comps:
            raise ValueError("an artifact needs at least one named component")
        object.__setattr__(self, "components", MappingProxyType(comps))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        object.__setattr__(self, "parents", tuple(self.parents))
        object.__setattr__(self, "id", content_id(comps))

    def __getitem__(self, name: str) -> str:
        return self.components[name]

    @property
    def names(self) -> list[str]:
        return list(self.components)

    def with_component(self, name: str, text: str, **lineage: Any) -> Artifact:
        """A child that differs in one component."""
        comps = dict(self.components)
        comps[name] = text
        return Artifact(comps, **lineage)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "components": dict(self.components),
            "parents": list(self.parents),
            "version_stamp": self.version_stamp,
            "frontier_stamp": self.frontier_stamp,
            "origin": self.origin,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Artifact:
        art = cls(
            components=raw["components"],
            parents=tuple(raw.get("parents", ())),
            version_stamp=int(raw.get("version_stamp", 0)),
            frontier_stamp=int(raw.get("frontier_stamp", 0)),
            origin=raw.get("origin", "seed"),
            meta=raw.get("meta", {}),
        )
        if "id" in raw and raw["id"] != art.id:
            raise ValueError(f"artifact id {raw['id']} does not match its components ({art.id})")
        return art
