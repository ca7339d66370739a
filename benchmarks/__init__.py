"""Reproducible measurements of release-graph on this machine: `make bench` writes docs/benchmarks.md."""
