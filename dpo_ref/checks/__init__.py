"""The properties that identify a correct implementation, and the Hypothesis strategies that drive them."""
