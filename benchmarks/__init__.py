"""Benchmarks for tripletkit: speed (``python -m benchmarks.speed``) and quality
(``python -m benchmarks.quality``); ``python -m benchmarks`` runs both.

Layout: :mod:`~benchmarks.speed` and :mod:`~benchmarks.quality` hold each benchmark's
protocol, run loop and CLI; they share :mod:`~benchmarks.registry` (what is measured: speed
methods, quality strategies), :mod:`~benchmarks.measure` (time, memory, threads),
:mod:`~benchmarks.report` (aggregation, markdown tables, figures) and
:mod:`~benchmarks.common` (machine info, JSON, progress bars).
"""
