"""TEST ONLY: DROP MATERIALIZED VIEW holding rows (computed from a table the downgrade drops too)."""

from alembic import op

revision = "dl_matview"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE MATERIALIZED VIEW dl_stage_counts AS SELECT stage::text AS stage, count(*) AS n "
        "FROM transformation_jobs GROUP BY stage"
    )


def downgrade() -> None:
    op.execute("DROP MATERIALIZED VIEW dl_stage_counts")
