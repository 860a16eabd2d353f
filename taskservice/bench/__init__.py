"""
Benchmarks: ``python -m taskservice.bench`` (see docs/benchmarks).
"""
