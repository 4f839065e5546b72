"""TEST ONLY: DROP SCHEMA ... CASCADE of a schema holding tables with rows."""

from alembic import op

revision = "dl_drop_schema"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA dl_feature")
    op.execute("CREATE TABLE dl_feature.events (id bigint PRIMARY KEY, kind text)")
    op.execute("CREATE TABLE dl_feature.empty_one (id bigint)")
    op.execute("INSERT INTO dl_feature.events SELECT g, 'k' || g FROM generate_series(1, 8) g")
    op.execute("CREATE VIEW dl_feature.recent AS SELECT * FROM dl_feature.events")


def downgrade() -> None:
    op.execute("DROP SCHEMA dl_feature CASCADE")
