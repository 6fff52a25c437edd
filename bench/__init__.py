"""Benchmarks behind `cli.py bench …`: each times a baseline in the same run and prints a ratio."""
