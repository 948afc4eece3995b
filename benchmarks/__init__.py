"""The nplus1loader benchmark suite: ``python -m benchmarks run``.

Stock lazy loading, nplus1loader and the hand-written optimum, run side by
side on SQLite, PostgreSQL and MySQL; see docs/benchmarks.md.
"""
