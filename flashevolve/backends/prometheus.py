"""A server's load from its Prometheus ``/metrics`` text, and that text for our own server.

vLLM and llama-server (started with ``--metrics``) both publish how many requests they are
serving and how many wait behind them.  flashevolve reads those two gauges (and the KV-cache
fill, when given) into a :class:`~flashevolve.backends.base.BackendLoad`; the simulated server
publishes the same names as vLLM, so one parser covers all three.

The gauges read, per server (a metric published with several label sets -- vLLM's data-parallel
engines -- is summed):

- vLLM: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, and the KV-cache fill
  ``vllm:kv_cache_usage_perc`` (newer releases) or ``vllm:gpu_cache_usage_perc`` (older ones),
  a fraction in [0, 1] despite the name;
- llama.cpp: ``llamacpp:requests_processing``, ``llamacpp:requests_deferred`` and, in the
  releases that have it, ``llamacpp:kv_cache_usage_ratio``.
"""

from __future__ import annotations

import math

from flashevolve.backends.base import BackendLoad

#: (running, waiting, KV-cache fill candidates) per server family, in the order tried.
_FAMILIES = (
    (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    (
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        ("llamacpp:kv_cache_usage_ratio",),
    ),
)


def parse_samples(text: str) -> dict[str, float]:
    """Metric name -> value, summed over label sets; comments and malformed lines skipped."""
    values: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:  # name{labels} value [timestamp]; label values may hold spaces
            name, _, rest = line.partition("{")
            _, _, rest = rest.rpartition("}")
        else:
            name, _, rest = line.partition(" ")
        fields = rest.split()
        if not name or not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isfinite(value):
            values[name.strip()] = values.get(name.strip(), 0.0) + value
    return values


def load_from_metrics(text: str) -> BackendLoad | None:
    """The load a ``/metrics`` page reports, or ``None`` when it has neither family's gauges."""
    samples = parse_samples(text)
    for running, waiting, kv_names in _FAMILIES:
        if running in samples and waiting in samples:
            kv = next((samples[k] for k in kv_names if k in samples), None)
            return BackendLoad(
                running=round(samples[running]),
                waiting=round(samples[waiting]),
                kv_usage=None if kv is None else min(1.0, max(0.0, kv)),
            )
    return None


def vllm_metrics_text(load: BackendLoad, model: str) -> str:
    """``load`` as vLLM publishes it (the gauges above; our simulated server serves this)."""
    label = model.replace("\\", "\\\\").replace('"', '\\"')
    lines = [
        "# HELP vllm:num_requests_running Requests being served (simulated server).",
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{model_name="{label}"}} {float(load.running)}',
        "# HELP vllm:num_requests_waiting Requests waiting for a slot (simulated server).",
        "# TYPE vllm:num_requests_waiting gauge",
        f'vllm:num_requests_waiting{{model_name="{label}"}} {float(load.waiting)}',
    ]
    if load.kv_usage is not None:
        lines += [
            "# HELP vllm:kv_cache_usage_perc KV-cache fill, 1 = full (simulated server).",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f'vllm:kv_cache_usage_perc{{model_name="{label}"}} {load.kv_usage}',
        ]
    return "\n".join(lines) + "\n"
