"""Benchmarks that print numbers (`make bench`); targets live here, not in timed tests."""
