"""Benchmarks of ladle's backends: pytest-benchmark suite, GPU check script and their shared parts.

Run `pytest bench --benchmark-only` (see bench/conftest.py for the options) or
`python -m bench.gpu_check --config llama-1b`.
"""
