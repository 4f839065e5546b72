"""A flag write that fails still says what the flag was before it: the audit records it (issue 15 §3:
the flag step comes first, so no earlier step has read the flag)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ansible.module_utils.flag_providers import FlagError
from ansible.module_utils.flag_switch import switch_flag


class Refusing:
    """A provider whose read says enabled and whose write is refused, as a 401 or a 500 beyond the budget."""

    name, flag, environment, label = "unleash", "DataTransformationFeature", "production", "Unleash"

    def __init__(self):
        self.client = SimpleNamespace(begin=lambda: None)

    def read(self):
        return SimpleNamespace(enabled=True)

    def write(self, desired, comment):
        raise FlagError("401: the token is not allowed to change the flag")


def test_a_failed_write_carries_the_state_read_before_it():
    with pytest.raises(FlagError) as raised:
        switch_flag(Refusing(), "disabled")
    assert raised.value.previous_state == "enabled"
