"""Benchmarks: `make bench` runs them; each prints the machine it ran on."""
