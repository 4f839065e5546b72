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
