"""Experiments built from training runs: ablation, sweep, per-run reports and run comparisons."""
