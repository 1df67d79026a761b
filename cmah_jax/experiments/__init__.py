"""Comparison suites: methods (CMAH, baselines, ablations) x code lengths x seeds under one
protocol; `python -m cmah_jax.experiments --suite=NAME --workdir=DIR`. See `__main__`."""
