"""The trainer: config, data, model, the loop, the run directory."""
