"""Experiments that reproduce published behaviour (`dpo-ref experiment ...`)."""
