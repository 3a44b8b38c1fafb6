"""Benchmark scenarios run through the suite (python -m bench), and their records (bench/results/)."""
