"""Benchmarks of the fleet-rlm runtime; ``python -m bench.bench_runtime`` runs them."""
