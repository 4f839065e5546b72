# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The guard: what a rollback (or deploy) request must be before anything is contacted.

`check_request(GuardInput)` decides from the command line as Ansible parsed it, the extra vars,
the inventory and the environment, in milliseconds and without contacting anything. It returns
a `Verdict`: the request as the audit records it (who, why, ticket, environment, whether it is
production-like, the tunables given) and, for a request that cannot be honoured, one sentence
saying what to do instead. Refused:

- `--start-at-task`, `--step`, `--tags`/`--skip-tags`, `--module-path`: the run is all or nothing;
- an extra var that is neither a request input nor a documented tunable (`ALLOWED`); the
  runbook's internal variables are refused by name (`rollback_prod_like`, `rollback_schema_archive`,
  the roles' results, ...); tunables that loosen a check only outside production-like environments;
- an `env` that is not an environment of the inventory, an empty reason, and for a
  production-like environment (a member of the inventory group `production_like`) a missing
  ticket or a confirmation that does not repeat the environment's name;
- a `--limit` that leaves out any database of the environment, or localhost (where the guard runs);
- an inventory outside the project, except in an AWX job (AWX passes its own inventory).

The operator: AWX's `awx_user_name` counts as AWX's only when AWX's own job environment is
present (`JOB_ID` equal to `awx_job_id`, and `AWX_HOST` or `AWX_PRIVATE_DATA_DIR`, which AWX sets
for every job: awx/main/tasks/jobs.py, RunJob.build_env); otherwise it is what it is, an extra var.

`from_ansible()` builds the input from Ansible's public API (context.CLIARGS, load_extra_vars,
InventoryManager); the rest is plain Python.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass, field

PRODUCTION_GROUP = "production_like"
NOT_ENVIRONMENTS = frozenset({"all", "ungrouped", PRODUCTION_GROUP})
NOTHING_DONE = "nothing was contacted and nothing was changed"

REQUEST_INPUTS = {
    # rollback_accept_data_statements: <revision>:<sha256> of statements the operator accepts (audited).
    "rollback": (
        "env",
        "reason",
        "ticket",
        "confirm",
        "operator",
        "rollback_revision",
        "rollback_accept_data_statements",
    ),
    # deploy_accept_restore_conflicts: rollback run ids whose conflicting archived rows stay archived (audited).
    "deploy": ("env", "reason", "ticket", "confirm", "operator", "deploy_revision", "deploy_accept_restore_conflicts"),
    # archive_purge_run_ids: the rollback runs whose archives to purge (default: all past the retention).
    "purge": ("env", "reason", "ticket", "confirm", "operator", "archive_purge_run_ids"),
}
# Operational knobs an on-call engineer may need in an emergency (slow APIs, busy databases).
TUNABLES = (
    "rollback_flag_timeout",
    "rollback_flag_max_wait",
    "rollback_propagation_timeout",
    "rollback_propagation_interval",
    "rollback_propagation_cache_ttl",
    "rollback_schema_lock_timeout",
    "rollback_schema_lock_attempts",
    "rollback_schema_statement_timeout",
    "rollback_schema_parallel",
    "rollback_verify_error_rate_range",
    "rollback_verify_error_rate_wait",
    "rollback_verify_error_rate_interval",
    "rollback_notify_timeout",
    "rollback_notify_max_wait",
)
# Knobs that loosen a check or change what code runs: rehearsals only, never production-like.
REHEARSAL_TUNABLES = (
    "rollback_verify_error_rate_tolerance",
    "rollback_verify_min_requests",
    "rollback_propagation_discovery",
    "rollback_propagation_require_fetch",
    "rollback_propagation_clock_skew",
    "rollback_schema_report_query_text",  # puts other sessions' SQL (customers' data) in the messages
    "rollback_migrations_version_locations",
    "rollback_migrations_ini",
    # The migration tool and project are the inventory's (group or host variables); a rehearsal may pass them.
    "rollback_schema_tool",
    "rollback_migrations_config_file",
    "rollback_efcore_down_script",
    "rollback_efcore_up_script",
)
# What AWX itself adds to a job's extra vars (awx/main/models: awx_meta_vars), and the template's own.
AWX_META = (
    "job_id", "job_launch_type", "job_template_id", "job_template_name", "job_scm_branch",
    "workflow_job_id", "workflow_job_name", "parent_job_schedule_id", "parent_job_schedule_name",
    "schedule_id", "schedule_name", "user_id", "user_name", "user_email", "user_first_name",
    "user_last_name", "inventory_id", "inventory_name", "project_revision", "project_scm_branch",
)  # fmt: skip
AWX_VARS = (*(f"{prefix}_{name}" for prefix in ("awx", "tower") for name in AWX_META), "rollback_awx_url")
# Internal variables refused by name, with why.
INTERNAL = {
    "rollback_prod_like": "whether an environment is production-like is its membership of the inventory group "
    f"{PRODUCTION_GROUP}",
    "rollback_schema_archive": "archiving the rows a downgrade drops is what makes the rollback lose no data",
}


def allowed(playbook: str) -> tuple[str, ...]:
    """Every extra var name the playbook accepts, in one place."""
    return (*REQUEST_INPUTS[playbook], *TUNABLES, *REHEARSAL_TUNABLES, *AWX_VARS)


class GuardRefused(Exception):
    """The request cannot be honoured; the message is the one sentence to show."""


@dataclass
class GuardInput:
    playbook: str
    cliargs: dict
    extra_vars: dict
    groups: dict[str, list[str]]
    hosts_in_limit: Callable[[str], list[str]]
    environ: dict
    project_dir: str
    inventory_sources: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    request: dict
    refusal: str | None = None


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def awx_job_environment(extra_vars: dict, environ: dict) -> bool:
    """True when this process runs inside the AWX job the extra vars name."""
    job = extra_vars.get("awx_job_id", extra_vars.get("tower_job_id"))
    return bool(
        environ.get("JOB_ID")
        and (environ.get("AWX_HOST") or environ.get("AWX_PRIVATE_DATA_DIR"))
        and job is not None
        and str(job) == environ["JOB_ID"]
    )


def _os_user(environ: dict) -> str:
    if environ.get("USER"):
        return environ["USER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.geteuid())


def resolve_operator(extra_vars: dict, environ: dict) -> dict:
    """Who operates and how we know it: {operator, operator_source[, operator_note]}."""
    awx_user = _text(extra_vars.get("awx_user_name") or extra_vars.get("tower_user_name"))
    if awx_user and awx_job_environment(extra_vars, environ):
        return {"operator": awx_user, "operator_source": "awx"}
    candidates = (
        # On a re-run, GITHUB_TRIGGERING_ACTOR is who re-ran it; GITHUB_ACTOR stays who started the first run.
        ("github", environ.get("GITHUB_ACTIONS") == "true", environ.get("GITHUB_TRIGGERING_ACTOR")),
        ("github", environ.get("GITHUB_ACTIONS") == "true", environ.get("GITHUB_ACTOR")),
        ("gitlab", environ.get("GITLAB_CI") == "true", environ.get("GITLAB_USER_LOGIN")),
        ("jenkins", bool(environ.get("JENKINS_URL")), environ.get("BUILD_USER_ID")),
    )  # fmt: skip
    for source, present, who in candidates:
        if present and _text(who):
            return {"operator": _text(who), "operator_source": source}
    named = _text(extra_vars.get("operator")) or awx_user
    if named:
        out = {"operator": named, "operator_source": "extra_var"}
        if awx_user and not _text(extra_vars.get("operator")):
            out["operator_note"] = "awx_user_name was given outside an AWX job: it is only what the command line said"
        return out
    return {"operator": _os_user(environ), "operator_source": "os_user"}


def job_url(extra_vars: dict, environ: dict) -> str:
    """Where this job's log is: AWX, GitLab, Jenkins or GitHub Actions ('' when none)."""
    if awx_job_environment(extra_vars, environ):
        base = _text(extra_vars.get("rollback_awx_url")) or _text(environ.get("AWX_HOST"))
        job = extra_vars.get("awx_job_id", extra_vars.get("tower_job_id"))
        return f"{base.rstrip('/')}/#/jobs/playbook/{job}" if base else ""
    if environ.get("GITLAB_CI") == "true" and environ.get("CI_JOB_URL"):
        return environ["CI_JOB_URL"]
    if environ.get("JENKINS_URL") and environ.get("BUILD_URL"):
        return environ["BUILD_URL"]
    if environ.get("GITHUB_ACTIONS") == "true" and environ.get("GITHUB_RUN_ID"):
        server, repo = environ.get("GITHUB_SERVER_URL", "https://github.com"), environ.get("GITHUB_REPOSITORY", "")
        return f"{server}/{repo}/actions/runs/{environ['GITHUB_RUN_ID']}"
    return ""


def _check_cli(cliargs: dict) -> None:
    whole = "the rollback runs whole (every check before any change; a re-run finishes what a failed run left)"
    if cliargs.get("start_at_task"):
        raise GuardRefused(f"--start-at-task is refused: {whole}: drop it; {NOTHING_DONE}.")
    if cliargs.get("step"):
        raise GuardRefused(f"--step is refused: {whole}: drop it; {NOTHING_DONE}.")
    tags, skip = tuple(cliargs.get("tags") or ()), tuple(cliargs.get("skip_tags") or ())
    if tags not in ((), ("all",)) or skip:
        given = " ".join([*(f"--tags {t}" for t in tags if t != "all"), *(f"--skip-tags {t}" for t in skip)])
        raise GuardRefused(
            f"{given} is refused: {whole}, and a partial rollback could drop what the application still uses:"
            f" drop --tags/--skip-tags; {NOTHING_DONE}."
        )
    if cliargs.get("module_path"):
        raise GuardRefused(f"--module-path is refused: the runbook runs its own modules only: drop it; {NOTHING_DONE}.")


def _check_inventory(sources: list[str], project_dir: str, in_awx: bool) -> None:
    if in_awx:
        return
    root = os.path.realpath(project_dir)
    outside = [s for s in sources if not os.path.realpath(s).startswith(root + os.sep)]
    if outside:
        raise GuardRefused(
            f"the inventory {', '.join(outside)} is outside the project: the environments, their databases and which"
            f" of them are production-like come from the project's inventories/: drop -i; {NOTHING_DONE}."
        )


def _check_names(playbook: str, extra_vars: dict) -> None:
    ok = set(allowed(playbook))
    unknown = sorted(name for name in extra_vars if name not in ok)
    if not unknown:
        return
    name = unknown[0]
    inputs = ", ".join(REQUEST_INPUTS[playbook])
    if name in INTERNAL:
        why = f"-e {name} cannot be set on the command line: {INTERNAL[name]}"
    elif name.startswith("rollback_"):
        why = f"-e {name} cannot be set on the command line: the inventory or an earlier step of the runbook sets it"
    elif name.startswith("ansible_"):
        why = f"-e {name} cannot be set on the command line: Ansible's own settings come from the inventory"
    else:
        why = f"-e {name} is not an input of {playbook}.yml"
    others = f" (nor is {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise GuardRefused(
        f"{why}{others}: drop it (inputs: {inputs}; tunables: docs/interfaces.md, 'Inputs'); {NOTHING_DONE}."
    )


def _environments(groups: dict) -> list[str]:
    return sorted(name for name, hosts in groups.items() if name not in NOT_ENVIRONMENTS and hosts)


def check_request(given: GuardInput) -> Verdict:
    """The verdict on a request; never raises for a bad request (the refusal is in the verdict)."""
    extra = given.extra_vars
    in_awx = awx_job_environment(extra, given.environ)
    env = _text(extra.get("env"))
    request = {
        "environment": env or None,
        "reason": _text(extra.get("reason")),
        "ticket": _text(extra.get("ticket")),
        **resolve_operator(extra, given.environ),
        "awx_job_id": extra.get("awx_job_id", extra.get("tower_job_id")) if in_awx else None,
        "awx_job_template": extra.get("awx_job_template_name", extra.get("tower_job_template_name"))
        if in_awx
        else None,
        "job_url": job_url(extra, given.environ),
        "check_mode": bool(given.cliargs.get("check")),
        "limit": given.cliargs.get("subset") or None,
        "tunables": {k: extra[k] for k in (*TUNABLES, *REHEARSAL_TUNABLES) if k in extra},
        "accept_data_statements": extra.get("rollback_accept_data_statements") or [],
    }
    try:
        _check_cli(given.cliargs)
        _check_inventory(given.inventory_sources, given.project_dir, in_awx)
        _check_names(given.playbook, extra)
        envs = _environments(given.groups)
        if not env or env not in envs:
            what = "env is missing" if not env else f"env={env} is not an environment of the inventory"
            raise GuardRefused(f"{what}: give -e env=<one of {', '.join(envs)}>; {NOTHING_DONE}.")
        hosts = list(given.groups[env])
        request["targets"] = hosts
        if not request["reason"]:
            raise GuardRefused(f'reason is empty: say why with -e reason="..."; {NOTHING_DONE}.')
        if PRODUCTION_GROUP not in given.groups:
            raise GuardRefused(
                f"the inventory has no group {PRODUCTION_GROUP}: make it the parent of the production-like"
                f" environments (see inventories/hosts.yml) and run again; {NOTHING_DONE}."
            )
        prod_like = any(host in given.groups[PRODUCTION_GROUP] for host in hosts)
        request["production_like"] = prod_like
        if prod_like:
            if not request["ticket"] or _text(extra.get("confirm")) != env:
                raise GuardRefused(
                    f"{env} is production-like: give the incident ticket and confirm the environment,"
                    f" e.g. -e ticket=INC-123 -e confirm={env}; {NOTHING_DONE}."
                )
            loosening = [name for name in REHEARSAL_TUNABLES if name in extra]
            if loosening:
                raise GuardRefused(
                    f"-e {loosening[0]} is for rehearsals only: {env} is production-like: drop it; {NOTHING_DONE}."
                )
        missing = [host for host in hosts if host not in set(given.hosts_in_limit(env))]
        if missing or not given.hosts_in_limit("localhost"):
            left_out = ", ".join(missing) if missing else "localhost (where the request is checked)"
            raise GuardRefused(
                f"--limit {given.cliargs.get('subset')} leaves out {left_out}: the rollback acts on every database"
                f" of {env}: drop --limit; {NOTHING_DONE}."
            )
    except GuardRefused as refused:
        return Verdict(request, str(refused))
    return Verdict(request)


def from_ansible(playbook: str, project_dir: str, environ: dict | None = None) -> GuardInput:
    """The guard's input as this ansible-playbook process sees it (public API only)."""
    from ansible import context  # noqa: PLC0415 - controller only
    from ansible.inventory.manager import InventoryManager  # noqa: PLC0415
    from ansible.parsing.dataloader import DataLoader  # noqa: PLC0415
    from ansible.utils.vars import load_extra_vars  # noqa: PLC0415

    cliargs = dict(context.CLIARGS)
    loader = DataLoader()
    extra_vars = dict(load_extra_vars(loader))
    sources = [str(s) for s in cliargs.get("inventory") or ()]
    inventory = InventoryManager(loader=loader, sources=sources)
    groups = {name: [h.name for h in group.get_hosts()] for name, group in inventory.groups.items()}
    limit = cliargs.get("subset")
    if limit:
        inventory.subset(limit)

    def hosts_in_limit(pattern: str) -> list[str]:
        return [host.name for host in inventory.get_hosts(pattern)]

    return GuardInput(
        playbook=playbook,
        cliargs=cliargs,
        extra_vars=extra_vars,
        groups=groups,
        hosts_in_limit=hosts_in_limit,
        environ=dict(os.environ if environ is None else environ),
        project_dir=project_dir,
        inventory_sources=sources,
    )
