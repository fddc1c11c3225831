"""Tests of dpo_ref.bench."""
