"""TEST ONLY: alembic's batch mode (on PostgreSQL it emits ALTER TABLE ... DROP COLUMN)."""

import sqlalchemy as sa
from alembic import op

revision = "dl_batch"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dl_batch",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("label", sa.Text(), nullable=True),
    )
    op.execute("INSERT INTO dl_batch SELECT g, g * 10, 'l' FROM generate_series(1, 6) g")


def downgrade() -> None:
    with op.batch_alter_table("dl_batch") as batch:
        batch.drop_column("score")
        batch.drop_column("label")
