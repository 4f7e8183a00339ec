"""Latency benchmarks: per-form and per-conv timing reports (timing primitives live in natsdeploy.timing)."""
