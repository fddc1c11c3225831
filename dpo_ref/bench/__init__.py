"""Benchmarks: dpo-ref's step against TRL's and the naive limit, log-prob memory."""
