"""Options shared by the commands that drive the serving simulator (``bench``, ``serve-sim``)."""

from __future__ import annotations

import argparse

DEFAULT_PROFILE = "vllm-h100-qwen3-8b"


def add_profile_option(parser: argparse.ArgumentParser) -> None:
    """``--profile``: which simulated server (one definition, so the commands cannot drift)."""
    from flashevolve.backends.sim.profiles import PROFILES

    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help="simulator profile (a SIMULATED server): "
        f"{', '.join(sorted(PROFILES))}; default {DEFAULT_PROFILE}",
    )
