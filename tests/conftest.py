"""Shared fixtures.  Kept small: ``fake_server_script`` is the path of ``tests/fake_server.py``,
a tiny real HTTP server (stdlib only) that stands in for ``vllm serve`` / any managed server in
process-lifecycle tests."""

from __future__ import annotations

from pathlib import Path

import pytest

FAKE_SERVER = Path(__file__).with_name("fake_server.py")


@pytest.fixture(scope="session")
def fake_server_script() -> Path:
    return FAKE_SERVER
