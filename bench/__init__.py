"""Benchmarks that print figures; no pass or fail."""
