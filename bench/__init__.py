"""Reproducible benchmarks: ``python -m bench`` (``make bench``) runs every module here.

Each module provides ``main() -> None``, prints a table, and measures ratios against a
baseline taken in the same run, never absolute numbers alone.
"""
