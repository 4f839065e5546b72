# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The runbook's own schema in the audit database: versioned migrations of `runbook.audit_*`.

Run by the audit database's owner (`playbooks/audit_setup.yml`, module `audit_schema`), never by
the rollback: the rollback's role (the writer) only gets USAGE on the schema, SELECT and INSERT on
`runbook.audit_log` and SELECT on `runbook.audit_head`. What the writer cannot do is enforced
twice: by privileges, and by triggers that refuse UPDATE, DELETE and TRUNCATE of the log (even
for its owner, who would have to drop them first, which PostgreSQL's own log would show) and any
change of the head other than by an append. Each applied migration is a row of
`runbook.audit_migrations`; applying is idempotent and serialised by an advisory lock.
"""

from __future__ import annotations

from ansible.module_utils.pg_session import advisory_key

MIGRATE_LOCK_KEY = advisory_key("emergency-rollback:audit-migrate")

_V1 = r"""
CREATE TABLE runbook.audit_log (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    prev_sha256 text NOT NULL CHECK (prev_sha256 ~ '^[0-9a-f]{64}$'),
    sha256 text NOT NULL UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    seal text NOT NULL CHECK (seal ~ '^[0-9a-f]{64}$'),
    run_id text NOT NULL,
    kind text NOT NULL,
    line text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    recorded_by text NOT NULL DEFAULT session_user
);
CREATE INDEX audit_log_run_id ON runbook.audit_log (run_id);
COMMENT ON TABLE runbook.audit_log IS
    'The rollback audit: one sealed record line per row, chained across every run. Append-only.';

CREATE TABLE runbook.audit_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq bigint NOT NULL,
    sha256 text NOT NULL
);
INSERT INTO runbook.audit_head (one, seq, sha256) VALUES (true, 0, repeat('0', 64));

CREATE FUNCTION runbook.audit_log_append() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    head_seq bigint;
    head_sha text;
BEGIN
    SELECT seq, sha256 INTO head_seq, head_sha FROM runbook.audit_head FOR UPDATE;
    IF NEW.seq <> head_seq + 1 OR NEW.prev_sha256 <> head_sha THEN
        RAISE EXCEPTION 'audit record seq % does not follow the chain head (seq %)', NEW.seq, head_seq;
    END IF;
    IF NEW.sha256 <> encode(sha256(convert_to(NEW.seq::text || ':' || NEW.prev_sha256 || ':'
            || encode(sha256(convert_to(NEW.line, 'UTF8')), 'hex'), 'UTF8')), 'hex') THEN
        RAISE EXCEPTION 'audit record seq % has a sha256 that does not match its content', NEW.seq;
    END IF;
    NEW.recorded_at := clock_timestamp();
    NEW.recorded_by := session_user;
    UPDATE runbook.audit_head SET seq = NEW.seq, sha256 = NEW.sha256;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_log_append BEFORE INSERT ON runbook.audit_log
    FOR EACH ROW EXECUTE FUNCTION runbook.audit_log_append();

CREATE FUNCTION runbook.audit_refuse() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION '% of %.% is refused: the audit is append-only', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME;
END
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON runbook.audit_log
    FOR EACH ROW EXECUTE FUNCTION runbook.audit_refuse();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON runbook.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION runbook.audit_refuse();
-- The head moves only inside an append (trigger depth 1); anything else is refused.
CREATE TRIGGER audit_head_no_change BEFORE UPDATE OR DELETE ON runbook.audit_head
    FOR EACH ROW WHEN (pg_trigger_depth() = 0) EXECUTE FUNCTION runbook.audit_refuse();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON runbook.audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION runbook.audit_refuse();
CREATE TRIGGER audit_head_no_insert BEFORE INSERT ON runbook.audit_head
    FOR EACH ROW EXECUTE FUNCTION runbook.audit_refuse();

REVOKE ALL ON runbook.audit_log, runbook.audit_head FROM PUBLIC;
REVOKE ALL ON FUNCTION runbook.audit_log_append(), runbook.audit_refuse() FROM PUBLIC;
"""

# (version, what it does, SQL). Never edit an applied migration: add the next one.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "audit log: append-only sealed records chained across runs, the chain head, their triggers", _V1),
)
LATEST = MIGRATIONS[-1][0]

_BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS runbook;
CREATE TABLE IF NOT EXISTS runbook.audit_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL DEFAULT session_user
);
REVOKE ALL ON runbook.audit_migrations FROM PUBLIC;
"""
WRITER_GRANTS = {"runbook.audit_log": ("SELECT", "INSERT"), "runbook.audit_head": ("SELECT",)}
FORBIDDEN = ("UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


class MigrationError(Exception):
    """The audit schema cannot be migrated as asked (one sentence naming the fix)."""


def applied_versions(cur) -> list[int]:
    cur.execute("SELECT to_regclass('runbook.audit_migrations') IS NOT NULL")
    if not cur.fetchone()[0]:
        return []
    cur.execute("SELECT version FROM runbook.audit_migrations ORDER BY version")
    return [row[0] for row in cur.fetchall()]


def _check_writer(cur, writer: str) -> None:
    cur.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (writer,))
    row = cur.fetchone()
    if row is None:
        raise MigrationError(f"the role {writer!r} does not exist: create it (CREATE ROLE ... LOGIN) and run again")
    if row[0]:
        raise MigrationError(f"the role {writer!r} is a superuser, who could drop the triggers: use an ordinary role")
    cur.execute("SELECT pg_has_role(%s, current_user, 'MEMBER')", (writer,))
    if cur.fetchone()[0]:
        raise MigrationError(
            f"the role {writer!r} is (a member of) the owner of the audit tables: the writer must be another role"
        )


def _grants_needed(cur, writer: str) -> list[str]:
    """The GRANT/REVOKE statements that would bring the writer's privileges to exactly WRITER_GRANTS."""
    statements = []
    cur.execute("SELECT has_schema_privilege(%s, 'runbook', 'USAGE')", (writer,))
    if not cur.fetchone()[0]:
        statements.append("GRANT USAGE ON SCHEMA runbook TO {role}")
    for table, wanted in WRITER_GRANTS.items():
        for privilege in (*wanted, *FORBIDDEN):
            cur.execute("SELECT has_table_privilege(%s, %s, %s)", (writer, table, privilege))
            has = cur.fetchone()[0]
            if privilege in wanted and not has:
                statements.append(f"GRANT {privilege} ON {table} TO {{role}}")
            elif privilege not in wanted and has:
                statements.append(f"REVOKE {privilege} ON {table} FROM {{role}}")
    return statements


def migrate(conn, writer: str, check_mode: bool = False) -> dict:
    """Apply the missing migrations and the writer's grants in one transaction; returns what was done."""
    from psycopg2 import sql as pgsql  # noqa: PLC0415 - the module reports a missing psycopg2 first

    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK_KEY,))
        _check_writer(cur, writer)
        done = applied_versions(cur)
        pending = [(v, name, text) for v, name, text in MIGRATIONS if v not in done]
        if not check_mode:
            cur.execute(_BOOKKEEPING)
            for version, name, text in pending:
                cur.execute(text)
                cur.execute("INSERT INTO runbook.audit_migrations (version, name) VALUES (%s, %s)", (version, name))
        if pending and check_mode:  # the tables are not there yet: the grants will all be needed
            grants = ["GRANT USAGE ON SCHEMA runbook TO {role}"]
            for table, wanted in WRITER_GRANTS.items():
                grants += [f"GRANT {privilege} ON {table} TO {{role}}" for privilege in wanted]
        else:
            grants = _grants_needed(cur, writer)
        if not check_mode:
            for statement in grants:
                cur.execute(pgsql.SQL(statement).format(role=pgsql.Identifier(writer)))
        if check_mode:
            conn.rollback()
    return {
        "changed": bool(pending or grants),
        "applied": [{"version": v, "name": name} for v, name, _ in pending],
        "version": max(done, default=0) if check_mode else LATEST,
        "grants": [statement.format(role=writer) for statement in grants],
    }
