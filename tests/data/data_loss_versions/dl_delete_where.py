"""TEST ONLY: DELETE FROM ... WHERE ... (the feature's own rows removed by a condition)."""

from alembic import op

revision = "dl_delete_where"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_settings (id bigint PRIMARY KEY, origin text NOT NULL, value text)")
    op.execute(
        "INSERT INTO dl_settings SELECT g, CASE WHEN g % 3 = 0 THEN 'feature' ELSE 'legacy' END, 'v' || g "
        "FROM generate_series(1, 12) g"
    )


def downgrade() -> None:
    op.execute("DELETE FROM dl_settings WHERE origin = 'feature'")
