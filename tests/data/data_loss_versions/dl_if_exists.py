"""TEST ONLY: DROP TABLE IF EXISTS naming a table with rows and one that does not exist."""

from alembic import op

revision = "dl_if_exists"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_e (id bigint PRIMARY KEY)")
    op.execute("INSERT INTO dl_e SELECT g FROM generate_series(1, 9) g")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS dl_e, dl_never_created")
