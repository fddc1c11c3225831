"""Tests of proofs/: the derivations and their links to the code."""
