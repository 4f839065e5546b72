"""The argument spec shared by the modules that work on the application databases.

Kept apart from pg_session (which needs psycopg2) so that a module can still build its spec, and
say which library is missing, on a controller without the database libraries.
"""

from __future__ import annotations


def database_argument_spec(parallel: int) -> dict:
    """One database (`dsn`) or many (`databases`), the script directory, and connection settings."""
    return {
        "dsn": {"type": "str", "no_log": True},
        "databases": {
            "type": "list",
            "elements": "dict",
            "options": {
                "name": {"type": "str", "required": True},
                "dsn": {"type": "str", "required": True, "no_log": True},
            },
        },
        "parallel": {"type": "int", "default": parallel},
        "script_location": {"type": "path", "default": "migrations"},
        "version_locations": {"type": "list", "elements": "path"},
        "advisory_lock_wait": {"type": "float", "default": 30.0},
        "run_id": {"type": "str"},
        "application_name": {"type": "str", "default": "emergency-rollback"},
        "connect_timeout": {"type": "int", "default": 10},
        # A production-like environment: refuse any connection but sslmode=verify-full with a CA.
        "require_verified_tls": {"type": "bool", "default": False},
    }
