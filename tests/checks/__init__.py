"""Tests of dpo_ref.checks: the properties on dpo_ref itself, and each property shown to bite."""
