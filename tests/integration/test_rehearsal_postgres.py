"""The test PostgreSQL speaks password authentication over TCP, as production does."""

import psycopg2
import pytest

pytestmark = pytest.mark.integration


def test_tcp_requires_the_password(pg_cluster, pg_database):
    psycopg2.connect(pg_cluster.dsn(pg_database)).close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(pg_cluster.dsn(pg_database, password="not-the-password"))


def test_server_is_postgresql_16(pg_cluster):
    (version,) = pg_cluster.execute("SHOW server_version_num")[0]
    assert version.startswith("16")
