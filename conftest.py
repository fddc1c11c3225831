"""Shared pytest set-up: Hypothesis profiles, one torch thread per xdist worker, the device fixture.

Profiles (pick with `--hypothesis-profile=NAME`):
  ci        fast and deterministic; loaded automatically when the CI environment variable is set
  dev       the default on a developer machine: more examples, random seeds
  thorough  at least 1000 examples per property
No profile has a deadline: timings under pytest-xdist on 2 cores are not a correctness signal.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_common = dict(
    deadline=None, report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("ci", max_examples=30, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=100, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=1000, print_blob=True, **_common)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)  # xdist already runs one worker per core


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device():
    """CUDA when present, else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
