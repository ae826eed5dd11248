"""Benchmarks: tideflow against hand-written baselines, timed in the same run."""
