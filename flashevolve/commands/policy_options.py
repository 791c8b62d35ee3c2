"""Command-line options for the paper's mechanisms: staleness policy, speculative completion,
adaptive worker control, and winding down before the time budget ends (``flashevolve run``; the
objects themselves live in ``policies/``)."""

from __future__ import annotations

import argparse
from typing import Any

from flashevolve.commands.common import given_options, require_at_least_one
from flashevolve.errors import ConfigError


def add_policy_arguments(p: argparse.ArgumentParser) -> None:
    _add_staleness_arguments(p)
    _add_mechanism_arguments(p)


def policy_kwargs(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Evolver keyword arguments for one mode; fresh objects each call, because the reflective
    policy, the speculation and the controller keep per-run state."""
    out: dict[str, Any] = {
        "staleness": _staleness_policy(args),
        "staleness_counter": args.staleness_counter,
    }
    if mode == "async":
        out.update(_mechanisms(args))
    return out


def check_policy_arguments(args: argparse.Namespace) -> None:
    """One clear line per mistake in the staleness / speculation / control options; also sets
    ``args.reflective``."""
    require_at_least_one(
        args, {"reflective_k": "--reflective-k", "review_max_tokens": "--review-max-tokens"}
    )
    _check_mechanisms(args)
    if args.reflective_max_wait is not None and args.reflective_max_wait < 0:
        raise ConfigError(f"--reflective-max-wait must be >= 0, got {args.reflective_max_wait:g}")
    if args.review_temperature is not None and args.review_temperature < 0:
        raise ConfigError(f"--review-temperature must be >= 0, got {args.review_temperature:g}")
    from flashevolve.policies.reflective import Reflective
    from flashevolve.policies.staleness import policy_class

    try:
        args.reflective = policy_class(args.staleness) is Reflective
    except ValueError as err:
        raise ConfigError(f"--staleness: {err}") from None
    if not args.reflective:
        given = [flag for name, flag in _REFLECTIVE_ONLY.items() if getattr(args, name) is not None]
        if args.review_schema == "on":
            given.append("--review-schema on")
        if given:
            raise ConfigError(
                f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to "
                f"--staleness reflective "
                f"(got --staleness {args.staleness})"
            )


def _add_staleness_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("staleness (async mode; see docs/mechanisms.md)")
    g.add_argument(
        "--staleness",
        default="full",
        help="full (accept all stale work), guarded (drop it past a lag) or reflective (an LLM "
        "reviews it: accept, discard or patch into the current best)",
    )
    g.add_argument(
        "--staleness-counter",
        choices=("pool", "frontier"),
        default="pool",
        help="what makes work stale: any admission (pool) or a Pareto-front change (frontier)",
    )
    g.add_argument(
        "--reflective-k",
        type=int,
        default=None,
        help="reflective: stale items reviewed per call (default 4)",
    )
    g.add_argument(
        "--reflective-max-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="reflective: review a smaller batch after this long (run clock; default 5)",
    )
    g.add_argument(
        "--review-max-tokens",
        type=int,
        default=None,
        help="reflective: token cap of a review answer (default 4096)",
    )
    g.add_argument(
        "--review-temperature",
        type=float,
        default=None,
        help="reflective: sampling temperature of the review calls (default: the server's)",
    )
    g.add_argument(
        "--review-schema",
        choices=("auto", "on", "off"),
        default="auto",
        help="reflective: ask the server for JSON-schema-constrained review answers (the batch's "
        "item ids, the artifact's component names, capped texts; OpenAI-style response_format, "
        "served by llama-server and vLLM). auto: on for --backend local, whose tiny default "
        "model rarely writes valid JSON unaided. The strict answer parser is used either way",
    )


def _add_mechanism_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculation and worker control (async mode; see docs/mechanisms.md)")
    g.add_argument(
        "--speculate-validation",
        type=float,
        default=None,
        metavar="ALPHA",
        help="score a prefix of ALPHA of the validation set first: exact early reject, "
        "speculative admission confirmed or rolled back by the full score (e.g. 0.25)",
    )
    g.add_argument(
        "--speculate-rollout",
        type=float,
        default=None,
        metavar="ALPHA",
        help="hand the minibatch on once ALPHA of it is scored; late results are recorded",
    )
    g.add_argument(
        "--adaptive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="adaptive control (on by default in async mode): balance the stages, widen them "
        "while it buys more accepted work, narrow the job bound when requests pile up in front "
        "of the server; --no-adaptive keeps --workers and --max-in-flight fixed",
    )
    g.add_argument(
        "--wind-down",
        default=None,
        metavar="auto|SECONDS",
        help="this close to the end of --minutes, start no new job and let the jobs in flight "
        "finish; auto: the fastest recent job's time from start to admission",
    )
    for flag, kind, default, what in (
        ("--adaptive-period", float, 30.0, "seconds between decisions"),
        ("--adaptive-window", float, 120.0, "seconds of events each decision looks at"),
        ("--adaptive-max-workers", int, 64, "workers per stage at most"),
        ("--adaptive-max-in-flight", int, 512, "jobs in flight at most"),
    ):
        g.add_argument(
            flag, type=kind, default=None, help=f"adaptive: {what} (default {default:g})"
        )


_ADAPTIVE_ONLY = {
    "adaptive_period": ("--adaptive-period", "period_s"),
    "adaptive_window": ("--adaptive-window", "window_s"),
    "adaptive_max_workers": ("--adaptive-max-workers", "max_workers"),
    "adaptive_max_in_flight": ("--adaptive-max-in-flight", "max_in_flight_cap"),
}


def _mechanisms(args: argparse.Namespace) -> dict[str, Any]:
    """Evolver keyword arguments for --speculate-* and --adaptive; fresh objects per mode."""
    from flashevolve.policies.control import AdaptiveController
    from flashevolve.policies.speculation import Speculation

    out: dict[str, Any] = {}
    alphas = given_options(
        args, {"speculate_validation": "evaluate_alpha", "speculate_rollout": "rollout_alpha"}
    )
    if alphas:
        out["speculation"] = Speculation(**alphas)
    if args.adaptive is False:
        out["control"] = None
    else:  # the default, made here so that the --adaptive-* options reach it
        keywords = {name: key for name, (_, key) in _ADAPTIVE_ONLY.items()}
        out["control"] = AdaptiveController(**given_options(args, keywords))
    if args.wind_down is not None:
        out["wind_down"] = wind_down_setting(args.wind_down)
    return out


def wind_down_setting(text: str) -> str | float:
    """``--wind-down``'s value as Budget.wind_down takes it: "auto" or positive seconds."""
    if text == "auto":
        return text
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"--wind-down takes auto or a positive number of seconds, got {text!r}")
    return seconds


def _check_mechanisms(args: argparse.Namespace) -> None:
    for name, flag in (
        ("speculate_validation", "--speculate-validation"),
        ("speculate_rollout", "--speculate-rollout"),
    ):
        alpha = getattr(args, name)
        if alpha is not None and not 0 < alpha <= 1:
            raise ConfigError(f"{flag} takes a fraction in (0, 1], got {alpha:g}")
    given = [flag for name, (flag, _) in _ADAPTIVE_ONLY.items() if getattr(args, name) is not None]
    if given and args.adaptive is False:
        raise ConfigError(f"{', '.join(given)} cannot be used with --no-adaptive")
    for name, (flag, _) in _ADAPTIVE_ONLY.items():
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be positive, got {value:g}")
    if args.wind_down is not None:
        wind_down_setting(args.wind_down)
    try:
        _mechanisms(args)  # and the objects' own checks, before any backend starts
    except ValueError as err:
        raise ConfigError(f"speculation/adaptive options: {err}") from None


_REFLECTIVE_ONLY = {
    "reflective_k": "--reflective-k",
    "reflective_max_wait": "--reflective-max-wait",
    "review_max_tokens": "--review-max-tokens",
    "review_temperature": "--review-temperature",
}


def _staleness_policy(args: argparse.Namespace) -> Any:
    """The policy object for ``--staleness`` and its options (a name for full/guarded)."""
    if not args.reflective:
        return args.staleness
    from flashevolve.policies.reflective import Reflective

    schema = args.review_schema
    options: dict[str, Any] = {
        "review_schema": schema == "on"
        or (schema == "auto" and args.backend.partition(":")[0] == "local"),
        "temperature": args.review_temperature,
    }
    options.update(
        given_options(
            args,
            {
                "reflective_k": "k",
                "reflective_max_wait": "max_wait_s",
                "review_max_tokens": "max_tokens",
            },
        )
    )
    return Reflective(**options)
