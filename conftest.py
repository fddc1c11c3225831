"""Shared pytest set-up: the two tiers, Hypothesis profiles, one torch thread per xdist worker, the device fixture.

Tiers:
  quick     the default (`pytest -n auto`): every unit test, property, check and meta-test, and a fast form of
            each evidence suite (the corpus verified with fail-fast)
  full      `pytest -n auto --full` (or DPO_REF_FULL=1; CI runs it): also the tests marked `slow`: whole-corpus
            verification with every check and reproduction, real libraries, kill -9 fault injection, the
            default recipe's numbers, bench, torchrun, the TRL row search over every loss type, every test
            marked `download` (it fetches a library's wheel from the package registry), and the slowest of the
            rest, listed by node id in tests/full_tier.txt

Profiles (pick with `--hypothesis-profile=NAME`):
  ci        fast and deterministic; loaded automatically when the CI environment variable is set
  dev       the default on a developer machine: random seeds, 50 examples
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
settings.register_profile("dev", max_examples=50, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=1000, print_blob=True, **_common)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)  # xdist already runs one worker per core


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def unshrunk_in_quick_tier(request, monkeypatch):
    """Quick tier: the oracle reports the first failing example it finds instead of shrinking it (a test that
    only needs a check to fail, or a diagnosis to be named, does not need the smallest input). The reproduction
    is still replayed and self-asserting; the full tier shrinks as users get it."""
    if not full_tier(request.config):
        import dpo_ref.oracle.runner as runner

        monkeypatch.setattr(runner, "SHRINK_SECONDS", 0.0)


@pytest.fixture(scope="session")
def full(request) -> bool:
    """True in the full tier (`--full`): evidence suites then run their complete form."""
    return full_tier(request.config)


FULL_HINT = "slow or downloading evidence test: run the full tier with `pytest -n auto --full` (CI does)"


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        default=bool(os.environ.get("DPO_REF_FULL")),
        help="also run the tests marked slow (the full tier; CI runs it). Default: the quick tier",
    )


def full_tier(config) -> bool:
    return bool(config.getoption("--full"))


def pytest_report_header(config):
    if full_tier(config):
        return "dpo-ref: full tier (tests marked slow included)"
    return "dpo-ref: quick tier; tests marked slow are skipped (`pytest -n auto --full` runs them; CI does)"


FULL_TIER_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "full_tier.txt")


def full_tier_only() -> set[str]:
    """The node ids tests/full_tier.txt moves to the full tier (one a line, `#` comments)."""
    with open(FULL_TIER_LIST, encoding="utf-8") as f:
        return {line.split("  #")[0].strip() for line in f if line.strip() and not line.startswith("#")}


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason=FULL_HINT)
    skip_gpu = None if _cuda_available() else pytest.mark.skip(reason="needs a CUDA device; none is present")
    listed = full_tier_only()
    for item in items:
        if item.nodeid in listed:
            item.add_marker(pytest.mark.slow)
        if ("slow" in item.keywords or "download" in item.keywords) and not full_tier(config):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and skip_gpu is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def device():
    """CUDA when present, else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
