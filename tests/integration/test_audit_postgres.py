"""The audit's PostgreSQL copy against real PostgreSQL 16: the migration, the INSERT-only writer,
one chain across many concurrent runs, and every tampering of either copy named by verify."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import psycopg2
import pytest
from ansible.module_utils import audit_chain as ac
from ansible.module_utils.audit_crosscheck import run_audit_verify
from ansible.module_utils.audit_pg import entry_text
from ansible.module_utils.audit_pg_schema import MIGRATIONS
from ansible.module_utils.audit_schema_run import run_audit_schema
from ansible.module_utils.audit_sinks import AuditWriter

from tests.fixtures.audit import OWNER, WRITER

pytestmark = pytest.mark.integration

KEY_TEXT = "integration-audit-key-5d1e7c0a9b"
KEY = ac.AuditKey(KEY_TEXT.encode())


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(ac.KEY_ENV, KEY_TEXT)


def sql(dsn: str, statement: str, params=None, *, replica: bool = False):
    """One statement (as the DSN's role); `replica` disables the triggers, as a superuser can."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            if replica:
                cur.execute("SET session_replication_role = replica")
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def write_run(path: Path, dsn: str | None, run_id: str, kinds=("start", "request", "end")) -> None:
    writer = AuditWriter(str(path), KEY, pg_dsn=dsn)
    for kind in kinds:
        result = writer.write({"kind": kind, "run_id": run_id, "operator": "alice", "environment": "prod"})
        assert not result.errors(), result.errors()


def verify(path: Path | None, dsn: str | None) -> dict:
    return run_audit_verify({"path": str(path) if path else None, "pg_dsn": dsn})


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def store(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


# -- the migration and the writer's rights --------------------------------------------------------


def test_the_migration_creates_the_tables_once_and_grants_insert_only(audit_db):
    assert audit_db.migrated["applied"] == [{"version": v, "name": n} for v, n, _ in MIGRATIONS]
    again = run_audit_schema({"dsn": audit_db.owner_dsn, "writer_role": WRITER})
    assert (again["changed"], again["applied"], again["grants"]) == (False, [], [])
    rows = sql(
        audit_db.superuser_dsn,
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants WHERE grantee = %s ORDER BY 1, 2",
        (WRITER,),
    )
    assert rows == [("audit_head", "SELECT"), ("audit_log", "INSERT"), ("audit_log", "SELECT")]
    sql(audit_db.owner_dsn, f"GRANT UPDATE, DELETE ON runbook.audit_log TO {WRITER}")  # someone widens them
    widened = run_audit_schema({"dsn": audit_db.owner_dsn, "writer_role": WRITER}, check_mode=True)
    assert widened["changed"] and sorted(widened["grants"]) == [
        f"REVOKE DELETE ON runbook.audit_log FROM {WRITER}",
        f"REVOKE UPDATE ON runbook.audit_log FROM {WRITER}",
    ]
    assert run_audit_schema({"dsn": audit_db.owner_dsn, "writer_role": WRITER})["changed"]


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        ("postgres", "is a superuser, who could drop the triggers"),
        (OWNER, "is (a member of) the owner of the audit tables"),
        ("nobody_here", "the role 'nobody_here' does not exist: create it"),
    ],
)
def test_a_writer_that_could_undo_the_protection_is_refused(audit_db, writer, expected):
    result = run_audit_schema({"dsn": audit_db.owner_dsn, "writer_role": writer})
    assert result["failed"] and expected in result["msg"]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE runbook.audit_log SET line = 'x'",
        "DELETE FROM runbook.audit_log",
        "TRUNCATE runbook.audit_log",
        "UPDATE runbook.audit_head SET seq = 0",
    ],
)
def test_the_writer_can_only_insert_and_the_triggers_stop_even_the_owner(audit_db, tmp_path, statement):
    write_run(tmp_path / "a.jsonl", audit_db.writer_dsn, "r1")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        sql(audit_db.writer_dsn, statement)
    with pytest.raises(psycopg2.errors.RaiseException, match="is refused: the audit is append-only"):
        sql(audit_db.owner_dsn, statement)
    assert verify(tmp_path / "a.jsonl", audit_db.writer_dsn)["ok"]


def test_an_insert_that_does_not_follow_the_head_is_refused(audit_db):
    line = b'{"kind":"start"}'
    text = entry_text(5, ac.ZERO_SHA256, line)
    with pytest.raises(psycopg2.errors.RaiseException, match="does not follow the chain head"):
        sql(
            audit_db.writer_dsn,
            "INSERT INTO runbook.audit_log (seq, prev_sha256, sha256, seal, run_id, kind, line)"
            " VALUES (5, %s, %s, %s, 'r', 'start', %s)",
            (ac.ZERO_SHA256, ac.sha256_hex(text), KEY.mac(text), line.decode()),
        )


def test_without_the_migration_the_writer_says_what_to_run(pg_cluster, pg_database, tmp_path):
    writer = AuditWriter(str(tmp_path / "a.jsonl"), KEY, pg_dsn=pg_cluster.dsn(pg_database))
    result = writer.write({"kind": "start", "run_id": "r"})
    assert result.file_error is None
    assert result.pg_error.startswith(
        "the audit database has no runbook.audit_log: create it with playbooks/audit_setup"
    )


# -- many runs, concurrent writers: one chain that verifies --------------------------------------


def _runs(path: str, dsn: str, worker: int, count: int) -> None:
    os.environ[ac.KEY_ENV] = KEY_TEXT
    for i in range(count):
        write_run(Path(path), dsn, f"w{worker}-{i}")


def test_many_runs_from_concurrent_controllers_form_one_chain_that_verifies(audit_db, tmp_path):
    """Six writers: four controllers with a file each (AWX jobs), two sharing one file (one laptop)."""
    files = [tmp_path / f"job{n}.jsonl" for n in range(4)] + [tmp_path / "shared.jsonl"] * 2
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_runs, args=(str(f), audit_db.writer_dsn, n, 8)) for n, f in enumerate(files)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(300)
        assert proc.exitcode == 0
    pg = verify(None, audit_db.writer_dsn)
    assert pg["ok"], pg["msg"]
    assert (pg["records"], pg["runs"], pg["head_seq"]) == (144, 48, 144)
    for path in set(files):
        checked = verify(path, audit_db.writer_dsn)
        assert checked["ok"], checked["msg"]
        records = 48 if path.name == "shared.jsonl" else 24
        expected = (
            f"ok: {records} records, {records // 3} runs, 0 aborted; PostgreSQL: 144 records, head seq 144, agrees"
        )
        assert checked["msg"] == expected


# -- tampering, each named -----------------------------------------------------------------------


@pytest.fixture
def trail(audit_db, tmp_path):
    """Three runs in one file and in PostgreSQL (after a run of another controller)."""
    write_run(tmp_path / "other.jsonl", audit_db.writer_dsn, "elsewhere")
    path = tmp_path / "audit.jsonl"
    for run_id in ("r1", "r2", "r3"):
        write_run(path, audit_db.writer_dsn, run_id)
    assert verify(path, audit_db.writer_dsn)["ok"]
    return path, audit_db


def problem(path, dsn) -> dict:
    result = verify(path, dsn)
    assert not result["ok"] and result["broken"], result
    return result


def test_file_cut_at_the_end_is_missing_at_the_end(trail):
    path, db = trail
    store(path, lines_of(path)[:-3])  # the last run cut off: the file alone still verifies
    assert verify(path, None)["ok"]
    result = problem(path, db.writer_dsn)
    assert (result["broken"]["reason"], result["broken"]["run_id"], result["broken"]["line"]) == (
        "missing at the end",
        "r3",
        7,
    )
    assert "differ: broken at line 7 (run r3): missing at the end" in result["msg"]


def test_file_record_missing_in_the_middle(trail):
    path, db = trail
    lines = lines_of(path)
    del lines[4]
    store(path, lines)
    result = problem(path, db.writer_dsn)
    assert (result["broken"]["reason"], result["broken"]["line"]) == ("missing in the middle", 5)


def test_file_rewritten_and_rechained_without_the_key(trail):
    path, db = trail
    prev, out = None, []
    for line in lines_of(path):
        record = {**json.loads(line), "operator": "mallory"}
        record["prev_sha256"] = ac.ZERO_SHA256 if prev is None else ac.sha256_hex(prev)
        record["sha256"] = ac.record_sha256(record)
        prev = ac.canonical(record)
        out.append(prev)
    store(path, out)
    result = problem(path, db.writer_dsn)
    assert (result["broken"]["reason"], result["broken"]["line"]) == (ac.RESEALED, 1)


def test_file_replaced_by_a_new_chain_is_only_in_postgresql(trail):
    path, db = trail
    path.unlink()
    write_run(path, db.writer_dsn, "r4")
    result = problem(path, db.writer_dsn)
    assert (result["broken"]["reason"], result["broken"]["run_id"]) == ("only in PostgreSQL", "r1")


def test_record_only_in_the_file(trail, monkeypatch):
    path, db = trail
    writer = AuditWriter(str(path), KEY, pg_dsn=db.writer_dsn)
    monkeypatch.setattr(writer.pg, "append", lambda *a: 0)  # PostgreSQL silently never got it
    writer.write({"kind": "start", "run_id": "r4"})
    result = problem(path, db.writer_dsn)
    assert (result["broken"]["reason"], result["broken"]["line"]) == ("only in the file", 10)


def test_a_record_postgresql_refused_and_its_run_said_so_is_a_warning(trail, monkeypatch):
    path, db = trail
    writer = AuditWriter(str(path), KEY, pg_dsn=db.writer_dsn)
    real = writer.pg.append
    monkeypatch.setattr(writer.pg, "append", lambda *a: (_ for _ in ()).throw(ac.AuditWriteError("down")))
    first = writer.write({"kind": "start", "run_id": "r4"})
    monkeypatch.setattr(writer.pg, "append", real)
    warning = f"the PostgreSQL copy did not take the start record (file seq {first.record['seq']}): down"
    writer.write({"kind": "end", "run_id": "r4", "audit_warnings": [warning]})
    result = verify(path, db.writer_dsn)
    assert result["ok"], result["msg"]
    assert result["warnings"] == ["line 10 is not in PostgreSQL, which its run said was unreachable then"]


def test_postgresql_row_edited(trail):
    path, db = trail
    line = sql(db.superuser_dsn, "SELECT line FROM runbook.audit_log WHERE seq = 5")[0][0]
    forged = line.replace('"alice"', '"mallory"')
    sql(db.superuser_dsn, "UPDATE runbook.audit_log SET line = %s WHERE seq = 5", (forged,), replica=True)
    result = problem(path, db.writer_dsn)
    assert (result["broken"]["copy"], result["broken"]["line"], result["broken"]["reason"]) == (
        "postgresql",
        5,
        "edited",
    )


def test_postgresql_row_rewritten_and_rehashed_without_the_key(trail):
    path, db = trail
    seq, prev, line = sql(db.superuser_dsn, "SELECT seq, prev_sha256, line FROM runbook.audit_log WHERE seq = 5")[0]
    forged = ac.canonical({**json.loads(line), "operator": "mallory"})
    new_sha = ac.sha256_hex(entry_text(seq, prev, forged))
    sql(
        db.superuser_dsn,
        "UPDATE runbook.audit_log SET line = %s, sha256 = %s WHERE seq = 5",
        (forged.decode(), new_sha),
        replica=True,
    )
    result = problem(path, db.writer_dsn)
    assert (result["broken"]["line"], result["broken"]["reason"]) == (5, ac.RESEALED)


def test_postgresql_row_missing_in_the_middle(trail):
    path, db = trail
    sql(db.superuser_dsn, "DELETE FROM runbook.audit_log WHERE seq = 6", replica=True)
    result = problem(path, db.writer_dsn)
    assert (result["broken"]["line"], result["broken"]["reason"]) == (7, "missing in the middle")
    assert "The PostgreSQL copy of the audit is broken at PostgreSQL seq 7" in result["msg"]


def test_postgresql_rows_cut_at_the_end(trail):
    path, db = trail
    sql(db.superuser_dsn, "DELETE FROM runbook.audit_log WHERE seq > 10", replica=True)
    result = problem(None, db.writer_dsn)
    assert (result["broken"]["reason"], result["broken"]["line"]) == ("missing at the end", 11)
    # ... and with the head moved back too, the file still has them
    head = sql(db.superuser_dsn, "SELECT sha256 FROM runbook.audit_log WHERE seq = 10")[0][0]
    sql(db.superuser_dsn, "UPDATE runbook.audit_head SET seq = 10, sha256 = %s", (head,), replica=True)
    assert verify(None, db.writer_dsn)["ok"]
    result = problem(path, db.writer_dsn)
    assert (result["broken"]["reason"], result["broken"]["line"]) == ("only in the file", 8)


def test_postgresql_rows_reordered(trail):
    path, db = trail
    sql(
        db.superuser_dsn,
        "UPDATE runbook.audit_log SET seq = 1000 WHERE seq = 5; UPDATE runbook.audit_log SET seq = 5 WHERE seq = 6;"
        " UPDATE runbook.audit_log SET seq = 6 WHERE seq = 1000",
        replica=True,
    )
    result = problem(path, db.writer_dsn)
    assert (result["broken"]["line"], result["broken"]["reason"]) == (5, "reordered")


def test_verify_needs_the_key_for_sealed_records(trail, monkeypatch):
    path, db = trail
    monkeypatch.delenv(ac.KEY_ENV)
    assert "sealed: set ROLLBACK_AUDIT_KEY" in verify(path, None)["msg"]
    assert "sealed: set ROLLBACK_AUDIT_KEY" in verify(None, db.writer_dsn)["msg"]
    monkeypatch.setenv(ac.KEY_ENV, "another-key-entirely-0123456789")
    result = problem(path, db.writer_dsn)
    assert result["broken"]["reason"] == ac.RESEALED


def test_no_secret_in_what_verify_returns(trail):
    path, db = trail
    sql(db.superuser_dsn, "DELETE FROM runbook.audit_log WHERE seq = 6", replica=True)
    text = json.dumps(verify(path, db.writer_dsn))
    password = db.writer_dsn.split(":")[2].split("@")[0]
    assert password not in text and KEY_TEXT not in text
