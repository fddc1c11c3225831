"""Tests of the reference: losses, log-probs, the family, the registry, the formulas table; atomic writes, progress."""
