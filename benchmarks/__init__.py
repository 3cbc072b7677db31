"""Benchmarks for tripletkit: speed (``python -m benchmarks.speed``) and quality."""
