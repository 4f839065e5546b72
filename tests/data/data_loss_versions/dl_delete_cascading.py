"""TEST ONLY: a DELETE whose foreign key (ON DELETE CASCADE) also deletes rows of another table."""

from alembic import op

revision = "dl_delete_cascading"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_owner (id bigint PRIMARY KEY, kind text)")
    op.execute("CREATE TABLE dl_owned (id bigint PRIMARY KEY, owner_id bigint REFERENCES dl_owner ON DELETE CASCADE)")
    op.execute("INSERT INTO dl_owner SELECT g, CASE WHEN g < 4 THEN 'new' ELSE 'old' END FROM generate_series(1, 6) g")
    op.execute("INSERT INTO dl_owned SELECT g, 1 + g % 6 FROM generate_series(1, 12) g")


def downgrade() -> None:
    op.execute("DELETE FROM dl_owner WHERE kind = 'new'")
