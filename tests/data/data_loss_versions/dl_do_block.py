"""TEST ONLY: a DO block that deletes rows (the parser cannot see inside PL/pgSQL)."""

from alembic import op

revision = "dl_do_block"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_queue (id bigint PRIMARY KEY, state text)")
    op.execute("INSERT INTO dl_queue SELECT g, 'pending' FROM generate_series(1, 6) g")


def downgrade() -> None:
    op.execute("DO $$ BEGIN DELETE FROM dl_queue WHERE id > 2; END $$")
    op.execute("DROP TABLE dl_queue")
