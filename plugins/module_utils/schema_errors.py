# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Typed errors of the schema revert. The modules turn them into one-sentence failures.

Every message is built to be shown as is: one line, naming what failed and what to do, never a
password (pg_session.redact() has scrubbed it before the error is raised).
"""

from __future__ import annotations


class SchemaError(Exception):
    """Base class. `changed_nothing` says whether the database is exactly as before."""

    changed_nothing = True


class RefusedError(SchemaError):
    """The inputs or the database's state rule the operation out; nothing was executed."""


class ConnectError(SchemaError):
    """The database could not be reached (network, authentication, bad DSN)."""


class AdvisoryLockTimeout(SchemaError):
    """Another run holds the runbook's advisory lock on this database for longer than we may wait."""

    def __init__(self, message: str, holders: list[dict] | None = None):
        super().__init__(message)
        self.holders = holders or []


class LockTimeoutExhausted(SchemaError):
    """Every attempt of the downgrade timed out waiting for a table lock; all were rolled back."""

    def __init__(self, message: str, blocking_sessions: list[dict] | None = None, attempts: int = 0):
        super().__init__(message)
        self.blocking_sessions = blocking_sessions or []
        self.attempts = attempts


class MigrationFailed(SchemaError):
    """The downgrade raised; its transaction was rolled back, so the database is as before."""
