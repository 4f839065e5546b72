# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""An alembic project's upgrade, for the way forward: the target (`heads` by default), the refusal of
anything that is not an upgrade, the steps, and running it on the caller's connection inside the
caller's transaction, the way the revert runs its downgrade (alembic_runner.AlembicTool.run)."""

from __future__ import annotations

import os

from ansible.module_utils.schema_alembic import (
    BASE,
    ENV_PY_FIX,
    ancestors,
    env_py_reads_connection,
    heads,
    resolve_target,
    run_on_connection,
)
from ansible.module_utils.schema_errors import RefusedError


def resolve_targets(script, revision: str) -> tuple[str, tuple[str, ...]]:
    """(alembic's destination, the revisions the database must be at afterwards)."""
    revision = str(revision or "heads").strip()
    if revision in ("heads", "head"):
        found = tuple(heads(script))
        if revision == "head" and len(found) != 1:
            raise RefusedError(
                f"The script directory has multiple heads ({', '.join(found)}), so 'head' is ambiguous: "
                "give 'heads' or one revision id."
            )
        return "heads", found
    target = resolve_target(script, revision)
    if target == BASE:
        raise RefusedError("revision base would remove every migration: schema_upgrade only upgrades.")
    return target, (target,)


def check_upgrade(script, current: tuple[str, ...], targets: tuple[str, ...]) -> None:
    """Refuse (RefusedError) unless every current revision is at or below a target: never a downgrade."""
    below: set[str] = set()
    for target in targets:
        below |= ancestors(script, target)
    for rev in current:
        try:
            script.get_revision(rev)
        except Exception:
            raise RefusedError(
                f"The database is at revision {rev}, which the script directory does not contain: deploy with "
                "the migrations of a release that knows it."
            ) from None
        if rev not in below:
            raise RefusedError(
                f"The database is at {rev}, which is not below the target {', '.join(targets)}: schema_upgrade "
                "never downgrades (rollback.yml does); choose a later revision."
            )


def upgrade_steps(script, current: tuple[str, ...], destination: str) -> list[dict]:
    steps = script._upgrade_revs(destination, current or None)
    return [
        {"revision": s.revision.revision, "down_revision": s.revision.down_revision, "doc": s.revision.doc}
        for s in steps
    ]


def run_upgrade(project, script, conn, destination: str) -> None:
    """alembic's `upgrade` on the caller's connection, inside the caller's transaction, the way the revert runs
    its downgrade (schema_alembic.run_on_connection)."""
    run_on_connection(
        project,
        script,
        conn,
        fn=lambda rev, _ctx: script._upgrade_revs(destination, rev),
        destination=destination,
        what="the upgrade",
    )


def check_env_py(script) -> None:
    """Refuse (before any DDL) an env.py that ignores the connection handed to it: its upgrade would run on a
    connection without the advisory lock and timeouts, and outside the restore's transaction."""
    env_py = os.path.join(script.dir, "env.py")
    if not env_py_reads_connection(env_py):
        error = RefusedError(
            f"{env_py} ignores the connection the module hands it (config.attributes['connection']), so its upgrade "
            "would run outside the runbook's guards and the restore's transaction: refused before any DDL; add the "
            "lines of env_py_fix at the top of run_migrations_online(), then run again."
        )
        error.details = {"env_py": env_py, "env_py_fix": ENV_PY_FIX}
        raise error
