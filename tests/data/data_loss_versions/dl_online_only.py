"""TEST ONLY: a downgrade that drops a table only when run online, so the offline plan never shows it."""

from alembic import op

revision = "dl_online_only"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_sneaky (id bigint PRIMARY KEY)")
    op.execute("INSERT INTO dl_sneaky SELECT g FROM generate_series(1, 3) g")


def downgrade() -> None:
    if not op.get_context().as_sql:
        op.execute("DROP TABLE dl_sneaky")
