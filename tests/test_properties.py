"""Every property of the core suite holds for dpo_ref (see `property_suite.py` for the statements)."""

import pytest

from tests.implementations import REFERENCE
from tests.property_suite import PROPERTIES


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_property_holds_for_dpo_ref(name):
    PROPERTIES[name](REFERENCE)()
