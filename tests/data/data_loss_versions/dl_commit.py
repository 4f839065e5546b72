"""TEST ONLY: a downgrade that commits halfway (so it could never be rolled back as one transaction)."""

from alembic import op

revision = "dl_commit"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_half (id bigint PRIMARY KEY)")
    op.execute("CREATE TABLE dl_other_half (id bigint PRIMARY KEY)")


def downgrade() -> None:
    op.execute("DROP TABLE dl_half")
    op.execute("COMMIT")
    op.execute("DROP TABLE dl_other_half")
