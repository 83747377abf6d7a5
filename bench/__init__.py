"""Benchmarks: scripts (`python bench/<name>.py`) and modules (`python -m bench.<name>`)."""
