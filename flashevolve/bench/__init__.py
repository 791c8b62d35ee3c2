"""Benchmarks on the serving simulator: throughput configurations and orchestrator overhead."""
