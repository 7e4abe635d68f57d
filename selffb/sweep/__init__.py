"""Ablation sweeps: an ablation file's variants x seeds, each a train or selftrain run in its own
sub-workdir (plan.py), run here one after another or as SLURM jobs through submitit (run.py),
and aggregated over seeds into results.csv, results.md and plots (aggregate.py, plots.py)."""
