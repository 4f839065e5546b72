"""Database connections: TLS verified for production-like environments, never a password in a DSN.

Against the real PostgreSQL 16 of the tests, through its TLS front (rehearsal/pgtls.py) whose
certificate a fresh test CA signed: libpq does the real negotiation, handshake and verification.
"""

from __future__ import annotations

from urllib.parse import quote

import psycopg2
import pytest
from ansible.module_utils.pg_session import check_dsn, connect
from ansible.module_utils.schema_errors import ConnectError, RefusedError
from ansible.module_utils.schema_rollback_points import read_state

from rehearsal import pgtls
from tests.fixtures.schema import revert

pytestmark = pytest.mark.integration

CANARY = "Canary-pg-secret-7f3a"


@pytest.fixture
def password_env(pg_cluster, monkeypatch):
    """The superuser's password where the runbook takes it from: PGPASSWORD."""
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)
    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    return pg_cluster


def tls_dsn(cluster, dbname: str, sslmode: str = "verify-full", ca=None, host: str | None = None) -> str:
    ca = cluster.ca_file if ca is None else ca
    return (
        f"postgresql://postgres@{host or cluster.host}:{cluster.tls_port}/{dbname}"
        f"?sslmode={sslmode}&sslrootcert={quote(str(ca), safe='')}"
    )


def test_verify_full_with_the_right_ca_connects_over_tls(password_env, pg_database):
    conn = connect(tls_dsn(password_env, pg_database), require_verified_tls=True)
    try:
        assert conn.info.ssl_in_use and conn.info.dsn_parameters["sslmode"] == "verify-full"
        assert conn.info.ssl_attribute("protocol") in ("TLSv1.2", "TLSv1.3")
    finally:
        conn.close()


def test_a_wrong_ca_is_refused_by_the_handshake(password_env, pg_database, tmp_path):
    other = pgtls.make_certificates(tmp_path / "other-ca", common_name="some other CA")
    with pytest.raises(ConnectError) as refused:
        connect(tls_dsn(password_env, pg_database, ca=other.ca_cert), require_verified_tls=True)
    message = str(refused.value)
    assert "certificate verify failed" in message and "never a weaker sslmode" in message
    assert password_env.password not in message


def test_a_certificate_for_another_host_name_is_refused(password_env, pg_database):
    with pytest.raises(ConnectError, match='does not match host name "localhost"'):
        connect(tls_dsn(password_env, pg_database, host="localhost"), require_verified_tls=True)


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer", "require", "verify-ca"])
def test_anything_but_verify_full_is_refused_when_required_and_works_otherwise(password_env, pg_database, sslmode):
    dsn = tls_dsn(password_env, pg_database, sslmode=sslmode)
    with pytest.raises(RefusedError) as refused:
        connect(dsn, require_verified_tls=True)
    message = str(refused.value)
    assert f"sslmode is {sslmode}" in message and "set sslmode=verify-full and sslrootcert=" in message
    assert "nothing was contacted" in message and "postgresql://" not in message
    # The same server takes that connection when TLS is not required: the refusal is ours, before contact.
    connect(dsn).close()


def test_pgsslmode_counts_when_the_dsn_says_nothing(password_env, pg_database, monkeypatch):
    dsn = f"postgresql://postgres@127.0.0.1:{password_env.tls_port}/{pg_database}"
    monkeypatch.setenv("PGSSLMODE", "require")
    with pytest.raises(RefusedError, match="sslmode is require"):
        connect(dsn, require_verified_tls=True)
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", str(password_env.ca_file))
    connect(dsn, require_verified_tls=True).close()


def test_no_ca_file_and_unix_sockets_are_refused_when_required(password_env, pg_database, tmp_path):
    with pytest.raises(RefusedError, match="needs the CA that signed the server's certificate"):
        check_dsn(tls_dsn(password_env, pg_database, ca=tmp_path / "missing.pem"), require_verified_tls=True)
    socket_dsn = f"host={password_env.socket_dir} port={password_env.port} dbname={pg_database} sslmode=verify-full"
    with pytest.raises(RefusedError, match="Unix socket, which has no TLS"):
        check_dsn(socket_dsn, require_verified_tls=True)


@pytest.mark.parametrize(
    "shape",
    [
        "postgresql://postgres:{secret}@127.0.0.1:{port}/{db}",
        "postgresql://postgres@127.0.0.1:{port}/{db}?password={secret}",
        "host=127.0.0.1 port={port} dbname={db} user=postgres password={secret}",
        "host=127.0.0.1 port={port} dbname={db} user=postgres password='{secret}'",
    ],
    ids=["uri-userinfo", "uri-query", "keyword", "keyword-quoted"],
)
def test_a_dsn_that_carries_a_password_is_refused_before_any_contact(password_env, pg_database, shape):
    dsn = shape.format(secret=CANARY, port=password_env.tls_port, db=pg_database)
    for required in (False, True):
        with pytest.raises(RefusedError) as refused:
            connect(dsn, require_verified_tls=required)
        message = str(refused.value)
        assert "carries a password" in message and "PGPASSWORD or ~/.pgpass" in message
        assert CANARY not in message
    # Even a right password is refused: the DSN is what ends up in logs and outputs.
    right = shape.format(secret=password_env.password, port=password_env.port, db=pg_database)
    with pytest.raises(RefusedError):
        connect(right)
    psycopg2.connect(right).close()  # ... while libpq itself would have accepted it


def test_the_modules_pass_the_requirement_to_every_connection(password_env, app_db):
    """schema_state (read_state) with require_verified_tls: refused on sslmode=require, reads over verify-full."""
    cluster = password_env
    refused = read_state(
        {"name": "eu", "dsn": tls_dsn(cluster, app_db.name, sslmode="require"), "require_verified_tls": True}
    )
    assert refused["failed"] and "production-like" in refused["msg"] and refused["revision"] is None
    state = read_state({"name": "eu", "dsn": tls_dsn(cluster, app_db.name), "require_verified_tls": True})
    assert not state["failed"], state["msg"]
    assert state["revision"] == "0002_data_transformation"


def test_the_schema_revert_passes_the_requirement_too(password_env, app_db):
    """schema_migration's logic (revert_database), check mode: refused on sslmode=disable, planned on verify-full."""
    refused = revert(app_db, dsn=tls_dsn(password_env, app_db.name, sslmode="disable"), require_verified_tls=True)
    assert refused["failed"] and "sslmode is disable" in refused["msg"]
    planned = revert(app_db, dsn=tls_dsn(password_env, app_db.name), require_verified_tls=True, check_mode=True)
    assert not planned["failed"], planned["msg"]
    assert planned["from_revision"] == "0002_data_transformation" and planned["sql_sha256"]
