# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The database's state for the runbook, and its rollback points (`runbook.rollback_points`).

`read_state(job)` reads one database: its alembic revision, its schema fingerprint and the newest
rollback point; with `record_rollback_point` it first records a new one. deploy.yml records the
rollback point BEFORE its upgrade; the rollback reads it to know its target revision, and verifies
the fingerprint after the revert.

`runbook.rollback_points` belongs to the runbook, not to the application: alembic never touches
the `runbook` schema and the fingerprint ignores it. It is created when first needed, under the
runbook's advisory lock (so recording waits for a running schema revert and never races another
recording), and the row is written in the same transaction that read the revision and fingerprint.
Reading never creates anything and runs in a READ ONLY, REPEATABLE READ transaction (one snapshot).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC

from ansible.module_utils.alembic_runner import read_revisions
from ansible.module_utils.pg_locks import acquire_advisory_lock
from ansible.module_utils.pg_session import APPLICATION_NAME, connect, first_line, redact, resolve_dsn
from ansible.module_utils.schema_errors import RefusedError, SchemaError
from ansible.module_utils.schema_fingerprint import fingerprint_of, schema_objects

RUNBOOK_SCHEMA = "runbook"
POINT_COLUMNS = ("revision", "fingerprint", "error_rate_baseline", "recorded_at", "recorded_by", "run_id", "note")

_CREATE = """
CREATE SCHEMA IF NOT EXISTS runbook;
COMMENT ON SCHEMA runbook IS 'Owned by the emergency-rollback runbook; never touched by alembic migrations.';
CREATE TABLE IF NOT EXISTS runbook.rollback_points (
    id bigserial PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    revision text,
    fingerprint text NOT NULL,
    error_rate_baseline double precision,
    recorded_by text NOT NULL,
    run_id text,
    note text,
    db_role text NOT NULL DEFAULT current_user
);
"""
_LATEST = """
SELECT revision, fingerprint, error_rate_baseline, recorded_at, recorded_by, run_id, note
FROM runbook.rollback_points ORDER BY recorded_at DESC, id DESC LIMIT 1
"""
_INSERT = """
INSERT INTO runbook.rollback_points (revision, fingerprint, error_rate_baseline, recorded_by, run_id, note)
VALUES (%s, %s, %s, %s, %s, %s)
RETURNING revision, fingerprint, error_rate_baseline, recorded_at, recorded_by, run_id, note
"""


def _point(row) -> dict | None:
    if row is None:
        return None
    point = dict(zip(POINT_COLUMNS, row, strict=True))
    point["recorded_at"] = point["recorded_at"].astimezone(UTC).isoformat()
    return point


def latest_rollback_point(cursor) -> dict | None:
    """The newest recorded rollback point, or None (also when the table does not exist)."""
    cursor.execute("SELECT to_regclass('runbook.rollback_points') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return None
    cursor.execute(_LATEST)
    return _point(cursor.fetchone())


def record_rollback_point(cursor, *, revision, fingerprint, error_rate_baseline, recorded_by, run_id, note) -> dict:
    """Insert a rollback point (creating the schema and table if missing); returns the row."""
    cursor.execute(_CREATE)
    cursor.execute(_INSERT, (revision, fingerprint, error_rate_baseline, recorded_by, run_id, note))
    return _point(cursor.fetchone())


def project_heads(params: dict) -> tuple[list[str], object]:
    """(the migrations' heads, a function reading a database's current revisions) for the params' tool.

    alembic: the project's heads and its version table (as its env.py configures it). EF Core: the
    newest migration the `script` (if given) knows, and "__EFMigrationsHistory"."""
    if params.get("tool") == "efcore":
        from ansible.module_utils.efcore import history_heads, read_history_revisions  # noqa: PLC0415

        return history_heads(params.get("script")), read_history_revisions
    from ansible.module_utils.schema_alembic import heads, load_project, version_table  # noqa: PLC0415

    cfg, script = load_project(
        params.get("script_location"), params.get("version_locations"), params.get("config_file")
    )
    version = version_table(cfg, script)
    return heads(script), lambda cursor: read_revisions(cursor, version)


def state_defaults() -> dict:
    return {
        "name": None,
        "dsn": None,
        "check_mode": False,
        "record_rollback_point": False,
        "error_rate_baseline": None,
        "recorded_by": None,
        "run_id": None,
        "note": None,
        "include_objects": False,
        "fingerprint": True,
        "advisory_lock_wait": 30.0,
        "application_name": APPLICATION_NAME,
        "connect_timeout": 10,
        "require_verified_tls": False,  # a production-like environment: sslmode=verify-full or refuse
        "reader": None,  # function(cursor) -> current revisions (None without a version table)
    }


def read_state(job: dict) -> dict:
    """Revision, fingerprint and rollback point of one database (recording one first if asked).

    Never raises: failures are in `failed`/`msg`, without the DSN's password.
    """
    job = {**state_defaults(), **{k: v for k, v in job.items() if v is not None}}
    started = time.monotonic()
    result = {
        "name": job["name"],
        "changed": False,
        "failed": False,
        "msg": "",
        "revision": None,
        "revisions": [],
        "fingerprint": None,
        "rollback_point": None,
        "recorded": False,
    }
    dsn = job["dsn"]
    try:
        dsn = resolve_dsn(dsn)
        record = bool(job["record_rollback_point"])
        if record and not job["recorded_by"]:
            raise RefusedError("record_rollback_point needs recorded_by (who records it: the operator or CI actor).")
        conn = connect(dsn, job["application_name"], int(job["connect_timeout"]), bool(job["require_verified_tls"]))
        try:
            if record and not job["check_mode"]:
                acquire_advisory_lock(conn, float(job["advisory_lock_wait"]))  # released when conn closes
            conn.set_session(isolation_level="REPEATABLE READ", readonly=not record or job["check_mode"])
            with conn.cursor() as cur:
                revisions = (job["reader"] or read_revisions)(cur)
                result["revisions"] = list(revisions or ())
                result["revision"] = ",".join(revisions) if revisions else None
                # The fingerprint reads the whole catalog: skipped when the caller only needs the
                # revision and the rollback point (the rollback's preflight, on many databases).
                if job["fingerprint"] or record or job["include_objects"]:
                    objects = schema_objects(cur)
                    result["fingerprint"] = fingerprint_of(objects)
                    if job["include_objects"]:
                        result["objects"] = objects
                if record:
                    new_point = {
                        "revision": result["revision"],
                        "fingerprint": result["fingerprint"],
                        "error_rate_baseline": job["error_rate_baseline"],
                        "recorded_by": job["recorded_by"],
                        "run_id": job["run_id"],
                        "note": job["note"],
                    }
                    result["changed"] = True
                    if job["check_mode"]:
                        result["would_record"] = new_point
                        result["rollback_point"] = latest_rollback_point(cur)
                    else:
                        result["rollback_point"] = record_rollback_point(cur, **new_point)
                        result["recorded"] = True
                else:
                    result["rollback_point"] = latest_rollback_point(cur)
            conn.commit()
        finally:
            conn.close()
    except SchemaError as exc:
        result.update(failed=True, changed=False, msg=redact(str(exc), dsn))
    except Exception as exc:
        result.update(failed=True, changed=False, msg=redact(f"Cannot read the schema state: {first_line(exc)}", dsn))
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    return result


def read_states(jobs: list[dict], parallel: int = 4) -> list[dict]:
    """read_state() for many databases, in threads (only psycopg2 runs here, no alembic)."""
    if len(jobs) <= 1 or parallel <= 1:
        return [read_state(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(parallel, len(jobs))) as pool:
        return list(pool.map(read_state, jobs))
