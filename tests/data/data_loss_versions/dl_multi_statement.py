"""TEST ONLY: a multi-statement op.execute dropping a view and two tables with rows."""

from alembic import op

revision = "dl_multi_statement"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_a (id bigint PRIMARY KEY, note text)")
    op.execute("CREATE TABLE dl_b (id bigint PRIMARY KEY, amount numeric)")
    op.execute("INSERT INTO dl_a SELECT g, 'a-' || g FROM generate_series(1, 7) g")
    op.execute("INSERT INTO dl_b SELECT g, g * 1.5 FROM generate_series(1, 4) g")
    op.execute("CREATE VIEW dl_v AS SELECT id FROM dl_a")


def downgrade() -> None:
    op.execute("DROP VIEW dl_v; DROP TABLE dl_a; DROP TABLE dl_b")
