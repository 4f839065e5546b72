"""TEST ONLY: a downgrade that drops a table through a DBAPI cursor of its own (no SQLAlchemy event sees it)."""

from alembic import op

revision = "dl_bypass"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_sneaky (id bigint PRIMARY KEY)")
    op.execute("INSERT INTO dl_sneaky SELECT g FROM generate_series(1, 3) g")


def downgrade() -> None:
    if not op.get_context().as_sql:
        with op.get_bind().connection.driver_connection.cursor() as cursor:
            cursor.execute("DROP TABLE dl_sneaky")
