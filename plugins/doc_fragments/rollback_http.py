# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The TLS options every runbook plugin that speaks HTTP shares (documented once)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  validate_certs:
    description:
      - Verify the server's TLS certificate. Turning it off is reported as a warning on every run;
        prefer O(ca_path) for an internal CA.
    type: bool
    default: true
  ca_path:
    description: A CA bundle (PEM) to verify the server's certificate with, instead of the system's.
    type: path
"""
