"""TEST ONLY: a second head branching from 0001_legacy, for the "multiple heads" refusals.

Revision ID: 0002b_other_branch
Revises: 0001_legacy
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002b_other_branch"
down_revision: str | Sequence[str] | None = "0001_legacy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table("branch_notes", sa.Column("id", sa.BigInteger(), primary_key=True))


def downgrade() -> None:
    op.drop_table("branch_notes")
