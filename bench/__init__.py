"""ferry's benchmarks: `python -m bench` (see docs/benchmarks.md), and scripts of their own."""
