"""pytest plugin (registered as the `pytest11` entry point `dpo_ref`): conformance checks as tests.

    pytest --dpo-target path/to/file.py:my_loss [--dpo-level loss|logps] [--dpo-variant dpo|cdpo|ipo|ipo-mean|hinge|...]
           [--dpo-beta B] [--dpo-label-smoothing E] [--dpo-coef NAME=VALUE] [--dpo-max-examples N] [--dpo-xfail FILE]
           [--dpo-strict] [--dpo-reduction auto|none|mean|sum]

adds one test per check (`dpo-ref::values`, ...) to the session; a failing check fails its test with
the reproduction, so the run exits non-zero. Without `--dpo-target` the plugin does nothing. Loading
it imports neither torch nor dpo_ref's numerical code: that happens only when a target is given.
"""

from __future__ import annotations

import pytest

from dpo_ref.variants import VARIANTS


def pytest_addoption(parser) -> None:
    group = parser.getgroup("dpo-ref", "DPO/IPO conformance checks (dpo-ref)")
    group.addoption("--dpo-target", default=None, help="path/to/file.py:name, package.module:name, trl or torchtune")
    group.addoption("--dpo-level", default=None, choices=("loss", "logps", "library"), help="default: loss")
    group.addoption("--dpo-variant", default="dpo", choices=VARIANTS, help="the loss the target claims to compute")
    group.addoption("--dpo-beta", type=float, default=None, help="fixed beta (tau for IPO); default: drawn")
    group.addoption("--dpo-label-smoothing", type=float, default=None, help="cdpo eps; default: drawn")
    group.addoption(
        "--dpo-coef", action="append", default=[], help="a family variant's fixed coefficient NAME=VALUE (repeatable)"
    )
    group.addoption("--dpo-max-examples", type=int, default=None, help="Hypothesis examples per check")
    group.addoption("--dpo-xfail", default=None, help="file listing check names expected to fail, one per line")
    group.addoption(
        "--dpo-strict",
        action="store_true",
        default=False,
        help="demand float64-exact results and count the advisory checks (see dpo-ref verify --strict)",
    )
    group.addoption(
        "--dpo-reduction",
        default="auto",
        choices=("auto", "none", "mean", "sum"),
        help="what the loss returns (a batch sum fails unless declared): default auto",
    )


class DpoCheckItem(pytest.Item):
    """One conformance check as a test item."""

    def __init__(self, *, check, **kwargs):
        super().__init__(**kwargs)
        self.check = check

    def runtest(self) -> None:
        self.check()

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, AssertionError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return "dpo-ref", None, f"dpo-ref::{self.name}"


def pytest_collection_modifyitems(session, config, items) -> None:
    target = config.getoption("dpo_target", None)
    if not target:
        return
    from dpo_ref.errors import InputError
    from dpo_ref.oracle.api import read_xfail_file
    from dpo_ref.oracle.pytest_support import checks_for

    kwargs = {
        "beta": config.getoption("dpo_beta"),
        "label_smoothing": config.getoption("dpo_label_smoothing"),
        "strict": config.getoption("dpo_strict"),
        "reduction": config.getoption("dpo_reduction"),
    }
    if config.getoption("dpo_coef"):
        from dpo_ref.oracle.cli import parse_coefficients

        try:
            kwargs["coefficients"] = parse_coefficients(config.getoption("dpo_coef"))
        except InputError as err:
            raise pytest.UsageError(f"dpo-ref: {err}") from None
    if config.getoption("dpo_max_examples") is not None:
        kwargs["max_examples"] = config.getoption("dpo_max_examples")
    try:
        xfail_path = config.getoption("dpo_xfail")
        xfail = read_xfail_file(xfail_path) if xfail_path else ()
        checks = checks_for(
            target, config.getoption("dpo_level"), config.getoption("dpo_variant"), xfail=xfail, **kwargs
        )
    except InputError as err:
        raise pytest.UsageError(f"dpo-ref: {err}") from None
    # nodeid "dpo-ref::values" (not "::dpo-ref::values"): the progress line then names "dpo-ref", not "."
    added = [
        DpoCheckItem.from_parent(session, name=f"dpo-ref::{check.name}", nodeid=f"dpo-ref::{check.name}", check=check)
        for check in checks
    ]
    items.extend(added)
    # Items added here bypass collection, so the terminal's header would say "collected 0 items" (or count
    # only the files' tests): report them as collected, as a collector would.
    report = pytest.CollectReport("dpo-ref", "passed", None, added)
    config.hook.pytest_collectreport(report=report)
