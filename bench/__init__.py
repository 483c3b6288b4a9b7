"""Benchmark workloads and suites (importable by tests as ``bench.models``)."""
