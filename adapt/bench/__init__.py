"""Benchmarks: scripts that time a stage and print the figures (`make bench`); not tests."""
