"""Benchmarks: each runs our system and its comparison baseline in the same run (see bench/README.md)."""
