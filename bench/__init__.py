"""quotaflow benchmarks: ``python bench/run.py`` (see bench/run.py)."""
