"""DataTransformationFeature: job tracking for the new transformation pipeline.

Revision ID: 0002_data_transformation
Revises: 0001_legacy

Creates the ENUM type `transformation_stage`, the table `transformation_jobs` (a foreign key into
the legacy `documents`, defaults), the index `ix_transformation_jobs_document_stage`, and the column
`documents.transform_version` on the legacy table. Names are fixed by docs/interfaces.md.

The downgrade is the emergency rollback's schema revert: it undoes all of it, in reverse order,
including the ENUM type, which neither `op.drop_table` nor autogenerate drops (sqlalchemy/alembic#886).
Every statement here is transactional (no CONCURRENTLY), so the whole revert runs in one transaction.
Adding a column with a constant default is a catalog-only change in PostgreSQL >= 11 (no rewrite).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_data_transformation"
down_revision: str | Sequence[str] | None = "0001_legacy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STAGES = ("queued", "running", "succeeded", "failed")


def _stage_type() -> postgresql.ENUM:
    # create_type=False: the type is created and dropped explicitly below, never implicitly by a table.
    return postgresql.ENUM(*STAGES, name="transformation_stage", create_type=False)


def upgrade() -> None:
    _stage_type().create(op.get_bind(), checkfirst=False)
    op.create_table(
        "transformation_jobs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),  # BIGSERIAL
        sa.Column("document_id", sa.BigInteger(), nullable=False),
        sa.Column("stage", _stage_type(), nullable=False, server_default=sa.text("'queued'")),
        sa.Column("pipeline_version", sa.Integer(), nullable=False, server_default=sa.text("2")),
        sa.Column("output", postgresql.JSONB(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name="transformation_jobs_pkey"),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name="transformation_jobs_document_id_fkey",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_transformation_jobs_document_stage", "transformation_jobs", ["document_id", "stage"])
    op.add_column(
        "documents",
        sa.Column("transform_version", sa.Integer(), nullable=False, server_default=sa.text("1")),
    )


def downgrade() -> None:
    op.drop_column("documents", "transform_version")
    op.drop_index("ix_transformation_jobs_document_stage", table_name="transformation_jobs")
    op.drop_table("transformation_jobs")
    _stage_type().drop(op.get_bind(), checkfirst=False)
