"""Where flashevolve keeps what it builds and downloads: ``FLASHEVOLVE_CACHE`` or
``~/.cache/flashevolve`` (the llama-server build, the default model, server logs)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("FLASHEVOLVE_CACHE") or str(Path.home() / ".cache" / "flashevolve")
    return Path(root).expanduser()
