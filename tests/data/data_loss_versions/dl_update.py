"""TEST ONLY: UPDATE ... SET ... WHERE ... rewriting values the feature wrote."""

from alembic import op

revision = "dl_update"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_profiles (id bigint PRIMARY KEY, mode text NOT NULL, tuned jsonb)")
    op.execute(
        "INSERT INTO dl_profiles SELECT g, CASE WHEN g % 2 = 0 THEN 'v2' ELSE 'v1' END, "
        "jsonb_build_object('k', g) FROM generate_series(1, 10) g"
    )


def downgrade() -> None:
    op.execute("UPDATE dl_profiles SET mode = 'v1', tuned = NULL WHERE mode = 'v2'")
