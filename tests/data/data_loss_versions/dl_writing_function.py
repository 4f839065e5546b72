"""TEST ONLY: a call of a volatile function that deletes rows."""

from alembic import op

revision = "dl_writing_function"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_sessions (id bigint PRIMARY KEY, expired boolean NOT NULL)")
    op.execute("INSERT INTO dl_sessions SELECT g, g % 2 = 0 FROM generate_series(1, 8) g")
    op.execute(
        "CREATE FUNCTION dl_purge_sessions() RETURNS bigint LANGUAGE plpgsql AS $$ "
        "DECLARE n bigint; BEGIN DELETE FROM dl_sessions WHERE expired; GET DIAGNOSTICS n = ROW_COUNT; RETURN n; END $$"
    )


def downgrade() -> None:
    op.execute("SELECT dl_purge_sessions()")
    op.execute("DROP FUNCTION dl_purge_sessions()")
