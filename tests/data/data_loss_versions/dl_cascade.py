"""TEST ONLY: DROP TABLE ... CASCADE taking a view (no data), a materialized view on it, a table
that inherits from it and a column of another table (of the dropped table's row type)."""

from alembic import op

revision = "dl_cascade"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_parent (id bigint PRIMARY KEY, label text)")
    op.execute("INSERT INTO dl_parent SELECT g, 'p' || g FROM generate_series(1, 5) g")
    op.execute("CREATE VIEW dl_parent_view AS SELECT id, label FROM dl_parent")
    op.execute("CREATE MATERIALIZED VIEW dl_parent_summary AS SELECT id, upper(label) AS label FROM dl_parent_view")
    op.execute("CREATE TABLE dl_inheriting (extra text) INHERITS (dl_parent)")
    op.execute("INSERT INTO dl_inheriting VALUES (100, 'child', 'e1'), (101, 'child', 'e2')")
    op.execute("CREATE TABLE dl_holder (id bigint PRIMARY KEY, snapshot dl_parent, keep text)")
    op.execute("INSERT INTO dl_holder VALUES (1, ROW(1, 'p1')::dl_parent, 'k'), (2, NULL, 'k')")


def downgrade() -> None:
    op.execute("DROP TABLE dl_parent CASCADE")
