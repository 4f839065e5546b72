"""TEST ONLY: TRUNCATE of a table that stays (only its rows go)."""

from alembic import op

revision = "dl_truncate"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_cache (id bigint PRIMARY KEY, blob text)")
    op.execute("INSERT INTO dl_cache SELECT g, repeat('b', g) FROM generate_series(1, 10) g")


def downgrade() -> None:
    op.execute("TRUNCATE dl_cache")
