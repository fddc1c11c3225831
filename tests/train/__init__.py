"""Tests of dpo_ref.train: data, the loop, run directories and crash recovery."""
