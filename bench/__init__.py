"""Benchmarks: every figure is reported next to the raw cost it contains, measured in the same
run."""
