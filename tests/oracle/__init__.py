"""Tests of dpo_ref.oracle: verify, CLI, options, gate, pytest plugin, adapters, matrix, libraries, the corpus."""
