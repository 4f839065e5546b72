"""TEST ONLY: a revision whose downgrade fails halfway, after some DDL.

Revision ID: 0003_faulty_downgrade
Revises: 0002_data_transformation

Never part of migrations/: it is added with version_locations (the schema_migration module's
option, or tests/data/faulty_versions/alembic.ini on the command line) to prove that a downgrade
failing after it has dropped a column and a table holding rows leaves the database exactly as it
was: same revision, same schema fingerprint, no archive.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_faulty_downgrade"
down_revision: str | Sequence[str] | None = "0002_data_transformation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAILURE = "simulated failure halfway through the downgrade of 0003_faulty_downgrade (test-only revision)"


def upgrade() -> None:
    op.create_table(
        "transformation_audit",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("detail", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="transformation_audit_pkey"),
        sa.ForeignKeyConstraint(["job_id"], ["transformation_jobs.id"], name="transformation_audit_job_id_fkey"),
    )
    op.add_column("transformation_jobs", sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("transformation_jobs", "retries")
    op.drop_table("transformation_audit")
    # Fails at run time with the message in PostgreSQL's error (invalid input syntax for type integer).
    # Not a DO block: the plan refuses those unless accepted, and this revision must fail halfway.
    op.execute(f"SELECT CAST('{FAILURE}' AS integer)")
