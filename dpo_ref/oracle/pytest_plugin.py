"""pytest plugin (registered as the `pytest11` entry point `dpo_ref`): conformance checks as tests.

    pytest --dpo-target path/to/file.py:my_loss [--dpo-level loss|logps] [--dpo-variant VARIANT]
           [--dpo-beta B] [--dpo-label-smoothing E] [--dpo-coef NAME=VALUE] [--dpo-max-examples N] [--dpo-xfail FILE]
           [--dpo-strict] [--dpo-reduction auto|none|mean|sum]

(the options are generated from `dpo_ref.oracle.options.OPTIONS`; VARIANT: any name in docs/variants.md)

adds one test per check (`dpo-ref::values`, ...) to the session; a failing check fails its test with
the reproduction, so the run exits non-zero. Without `--dpo-target` the plugin does nothing. Loading
it imports neither torch nor dpo_ref's numerical code: that happens only when a target is given.
"""

from __future__ import annotations

import pytest

from dpo_ref.oracle import options


def pytest_addoption(parser) -> None:
    group = parser.getgroup("dpo-ref", "DPO/IPO conformance checks (dpo-ref)")
    group.addoption("--dpo-target", default=None, help="path/to/file.py:name, package.module:name, trl or torchtune")
    options.add_pytest_options(group)  # the verification settings: dpo_ref.oracle.options.OPTIONS


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
    from dpo_ref.oracle.pytest_support import checks_for

    try:
        kwargs = options.from_pytest(config)
        checks = checks_for(target, kwargs.pop("level"), kwargs.pop("variant"), **kwargs)
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
