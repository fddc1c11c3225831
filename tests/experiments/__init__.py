"""Tests of dpo_ref.experiments."""
