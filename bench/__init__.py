"""Benchmarks run by `make bench` (`python -m bench`).

Every module `bench/NAME.py` with a `run()` function is one benchmark; `python -m
bench` runs them all in name order, `python -m bench NAME...` only those. Benchmarks
print their measurements; they assert nothing about speed.
"""
