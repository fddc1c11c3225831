"""Every property in the catalogue bites: each is shown to reject a deliberately broken implementation.

`tests/oracle_targets/broken_loss.py` and `broken_logps.py` list, for each broken implementation, the checks it
must fail (`EXPECTED`; `STRICT_EXPECTED` for the advisory checks, which fail only under strict);
`tests/test_oracle.py` runs them. These meta-tests keep that list complete: no property without a bug it
rejects, no bug that no property catches.
"""

from __future__ import annotations

from dpo_ref.oracle.catalogue import LOGPS_CHECKS, MARGIN_CHECKS
from tests.oracle_targets import broken_logps, broken_loss


def _bitten(*tables) -> set[str]:
    return {check for table in tables for _, checks in table.values() for check in checks}


def test_every_loss_property_bites():
    missing = {c.name for c in MARGIN_CHECKS} - _bitten(broken_loss.EXPECTED, broken_loss.STRICT_EXPECTED)
    assert not missing, f"loss checks no broken implementation is shown to fail: {missing}"


def test_every_logps_property_bites():
    missing = {c.name for c in LOGPS_CHECKS} - _bitten(broken_logps.EXPECTED, broken_logps.STRICT_EXPECTED)
    assert not missing, f"log-prob checks no broken implementation is shown to fail: {missing}"


def test_advisory_checks_bite_only_under_strict():
    advisory = {c.name for c in (*MARGIN_CHECKS, *LOGPS_CHECKS) if c.advisory}
    assert advisory == _bitten(broken_loss.STRICT_EXPECTED, broken_logps.STRICT_EXPECTED)
    assert not advisory & _bitten(broken_loss.EXPECTED, broken_logps.EXPECTED)


def test_every_broken_implementation_is_listed():
    for module in (broken_loss, broken_logps):
        defined = {
            n for n, f in vars(module).items() if callable(f) and getattr(f, "__module__", "") == module.__name__
        }
        defined = {n for n in defined if not n.startswith("_")}
        listed = set(module.EXPECTED) | set(module.STRICT_EXPECTED)
        assert defined == listed, defined ^ listed
