"""Evaluation on top of the models and judges: leaderboards from pairwise judgments (the
[eval] extra: scikit-learn for the fits)."""
