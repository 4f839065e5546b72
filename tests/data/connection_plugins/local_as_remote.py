"""A test connection: ansible-core's `local`, under another name, so that the runbook's action plugins
take their delegated path (the module through AnsiballZ, as on a bastion) while it still runs here."""

from __future__ import annotations

from ansible.plugins.connection.local import Connection as LocalConnection

DOCUMENTATION = """
name: local_as_remote
short_description: ansible.builtin.local under another transport name (tests only)
description:
  - Runs commands on the controller like C(local), but is not C(local), as a bastion's connection is not.
author: Emergency rollback runbook
options: {}
"""


class Connection(LocalConnection):
    transport = "local_as_remote"
