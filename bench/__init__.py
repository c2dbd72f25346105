"""Benchmarks of ftlog against the baselines a user would otherwise reach for (``make bench``).

Every figure is a ratio against a baseline measured in the same run (median of several runs), because absolute
times on shared machines are noise. See ``bench/RESULTS.md`` for the latest table and what each figure means.
"""
