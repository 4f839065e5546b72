#!/usr/bin/python
# Copyright: the emergency rollback runbook's authors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: one event of the rollback to every configured channel (Slack, e-mail, PagerDuty)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: notification
short_description: Tell people what the rollback did - Slack, e-mail and PagerDuty, in one task, in the same words
description:
  - "Sends one event of an emergency rollback to every configured channel at the same time, each
    retried within I(max_wait) seconds, and returns, per channel, what became of it in words -
    C(delivered), C(not configured), C(not sent) (check mode), C(not sent: <why>) or
    C(not delivered: <why>)."
  - "The words come from one function (notify_report.compose): the outcome in one line, then what
    changed, the state left behind (failures), what was verified (and what was inconclusive), what
    to do next, who/why/ticket, the job link, the RUNBOOK.md section and the audit run. The same
    lines are returned as C(summary) for the job output, posted to Slack, mailed, and put in the
    PagerDuty event's C(custom_details.summary)."
  - "I(event=start): a PagerDuty change event (the service's timeline shows the rollback).
    I(event=succeeded): Slack and e-mail (when I(announce)), a PagerDuty C(resolve) of the
    environment's dedup key and a change event. I(event=failed): the alert to Slack and e-mail, a
    PagerDuty C(trigger) and a change event."
  - "PagerDuty (Events API v2, C(POST /v2/enqueue) and C(POST /v2/change/enqueue)): the dedup key is
    C(emergency-rollback/<environment>/<feature>), so every failed attempt for one environment
    updates one open incident, and the next successful run resolves it (PagerDuty drops a resolve
    when no incident is open). Severity C(critical) when the schema step failed or the databases
    are left at different (or unknown) revisions, C(error) otherwise (an inconclusive
    verification included). C(custom_details) carry the run id, job link, flag state, each
    database's revision and the RUNBOOK.md section for the failed step, also attached as a link
    when the report gives C(runbook_url)."
  - "E-mail only with verified TLS when credentials are used: C(ssl.create_default_context()) checks
    the certificate chain (system trust store, or I(smtp_ca_file)) and the host name. I(smtp_secure)
    C(try) or C(never) with a password is refused, naming the fix. This is why the runbook does not
    use C(community.general.mail), whose TLS verifies neither the certificate nor the host name."
  - "An undeliverable notification is a warning (and in C(problems)), never a failure of the task:
    it must not hide or change the rollback's own outcome. C(changed) is always false."
  - Secrets (the Slack webhook URL, the SMTP password, the PagerDuty routing key) come from the
    options or from the environment variables named below; none of them ever appears in a result.
version_added: "0.2.0"
author:
  - Emergency rollback runbook, SEQ-OF-004 (@ops)
attributes:
  check_mode:
    support: full
    description: Composes the message and reports each configured channel as not sent (check mode); sends nothing.
  diff_mode:
    support: full
    description: Shows the message's text.
options:
  event:
    description: Which moment of the run this is.
    type: str
    required: true
    choices: [start, succeeded, failed]
  report:
    description:
      - What the run knows, as the role C(rollback_notify) gathers it. Keys (all optional) -
        C(feature), C(environment), C(run_id), C(audit_file), C(audit_status), C(job_url),
        C(operator), C(operator_source), C(ticket), C(reason), C(started_at) (epoch seconds),
        C(target_revision), C(flag_before), C(runbook), C(runbook_url), C(error_rate),
        C(failed_step), C(cause), and the registered results of the steps as they are -
        C(plan) (schema_migration in check mode), C(flag) (feature_flag), C(propagation),
        C(schema) (schema_migration), C(verification) (C({verdict, checks, summary}) published by
        rollback_verify), C(flag_left) and C(state_left) (the flag and the databases read after a
        failure).
      - A missing or failed result is what tells which step failed, unless C(failed_step) is given.
    type: dict
    required: true
  announce:
    description:
      - Send Slack and e-mail for I(event=succeeded). False for a re-run that changed nothing (it
        announces nothing); PagerDuty's resolve and change event are sent regardless.
    type: bool
    default: true
  include_start:
    description:
      - With I(event=succeeded) or I(event=failed), also send the start change event (with the run's
        start time), for a run that ended before its own I(event=start) task ran.
    type: bool
    default: false
  slack_webhook_url:
    description:
      - A Slack incoming webhook. The URL is the credential.
      - Falls back to the environment variable C(SLACK_WEBHOOK_URL); neither, no Slack message.
    type: str
  mail_to:
    description: E-mail recipients; empty, no e-mail.
    type: list
    elements: str
    default: []
  mail_from:
    description: The sender address.
    type: str
    default: emergency-rollback@localhost
  smtp_host:
    description: The SMTP server.
    type: str
    default: localhost
  smtp_port:
    description: Its port; default 587 for C(starttls), 465 for C(always), 25 otherwise.
    type: int
  smtp_secure:
    description:
      - C(starttls) - STARTTLS is required (the server must offer it), then verified TLS.
        C(always) - TLS from the first byte (usually port 465), verified.
        C(try) - STARTTLS when offered, else plaintext; refused with a password.
        C(never) - plaintext; refused with a password.
    type: str
    default: starttls
    choices: [starttls, always, try, never]
  smtp_username:
    description: Login name; falls back to C(SMTP_USERNAME). None, no login.
    type: str
  smtp_password:
    description: Password; falls back to C(SMTP_PASSWORD). Sent only over verified TLS.
    type: str
  smtp_ca_file:
    description: The CA bundle that verifies the SMTP server's certificate, instead of the system's trust store.
    type: path
  pagerduty_routing_key:
    description:
      - The Events API v2 integration key of the PagerDuty service (32 characters); falls back to
        C(PAGERDUTY_ROUTING_KEY). Neither, no page and no change event.
    type: str
  pagerduty_url:
    description:
      - The Events API's base address; C(/v2/enqueue) and C(/v2/change/enqueue) are appended. Change
        it only for the rehearsal's contract sink or a proxy. Plain http is refused except to loopback.
    type: str
    default: https://events.pagerduty.com
  pagerduty_source:
    description: The events' C(payload.source); default C(emergency-rollback/<environment>).
    type: str
    default: ""
  ca_path:
    description: A CA bundle for the HTTPS of Slack and PagerDuty (default, the system's trust store).
    type: path
  timeout:
    description: Seconds per connection attempt (HTTP request, SMTP session).
    type: float
    default: 10
  max_wait:
    description:
      - Seconds each channel may spend on retries (429, 5xx, timeouts, refused connections, SMTP 4xx)
        before it is reported as not delivered. Channels run at the same time.
    type: float
    default: 30
notes:
  - "PagerDuty's own modules are not used: C(community.general.pagerduty_alert) posts to a fixed
    address (no rehearsal sink) and neither it nor C(community.general.pagerduty_change) retries a
    429/5xx; C(pagerduty_change)'s custom details cannot carry the run id, job link, flag state or
    database revisions."
  - "Runs on the controller, inside Ansible's worker (action plugin) or as a module; needs requests."
seealso:
  - module: feature_flag
  - module: schema_migration
"""

EXAMPLES = r"""
- name: Tell the service's timeline that the rollback started
  notification:
    event: start
    report:
      feature: DataTransformationFeature
      environment: prod
      operator: alice
      ticket: INC-123
      reason: "go/no-go failed: 5xx at 4%"
      started_at: "{{ rollback_preflight_started }}"

- name: Page on a failure (the routing key from PAGERDUTY_ROUTING_KEY)
  notification:
    event: failed
    report:
      feature: DataTransformationFeature
      environment: prod
      flag: "{{ rollback_flag_result | default({}) }}"
      schema: "{{ rollback_schema_result | default({}) }}"
      flag_left: "{{ rollback_notify_flag_left }}"
      state_left: "{{ rollback_notify_state_left }}"
      cause: "{{ ansible_failed_result.msg | default('') }}"
    mail_to: [sre-oncall@example.com]
    smtp_host: smtp.example.com
    smtp_secure: starttls
  register: alert

- name: Show the same words the channels got
  ansible.builtin.debug:
    msg: "{{ alert.summary }}"
"""

RETURN = r"""
summary:
  description: The message, line by line (what Slack, e-mail and PagerDuty got).
  returned: always
  type: list
  elements: str
subject:
  description: The e-mail subject (also the Slack message's first line).
  returned: always
  type: str
  sample: "ROLLBACK FAILED in prod: failed at schema"
outcome:
  description: C(succeeded), C(failed) or C(inconclusive) (verification could not check).
  returned: always
  type: str
severity:
  description: The PagerDuty severity of this event.
  returned: always
  type: str
  sample: critical
dedup_key:
  description: PagerDuty's dedup key of the environment's rollback incident.
  returned: always
  type: str
  sample: emergency-rollback/prod/DataTransformationFeature
runbook:
  description: The RUNBOOK.md section for the failed step (a web address when the report gives runbook_url).
  returned: always
  type: str
  sample: "RUNBOOK.md#paged-schema"
deliveries:
  description:
    - Per channel (C(slack), C(mail), C(pagerduty), C(pagerduty_change_start), C(pagerduty_change_end)),
      in words.
  returned: always
  type: dict
  sample:
    slack: delivered
    mail: "not delivered: the TLS certificate of the SMTP server smtp.example.com:587 could not be verified ..."
    pagerduty: delivered
    pagerduty_change_end: delivered
delivered:
  description: The channels that were delivered.
  returned: always
  type: list
  elements: str
undelivered:
  description: The channels that were not delivered or were refused.
  returned: always
  type: list
  elements: str
problems:
  description: One sentence per undelivered channel (the same as the task's warnings), for the audit.
  returned: always
  type: list
  elements: str
attempts:
  description: Attempts per channel that was sent.
  returned: always
  type: dict
msg:
  description: One line, every channel's fate.
  returned: always
  type: str
"""

from ansible.module_utils.notify_options import notification_spec
from ansible.module_utils.runbook_plugin import Plugin

try:
    from ansible.module_utils.notify_core import run_notification
except ImportError as exc:  # requests is missing on the controller
    run_notification, IMPORT_ERROR = None, exc
else:
    IMPORT_ERROR = None

# The plugin, once: this module's main() and the action plugins/action/notification.py both run it.
PLUGIN = Plugin("notification", notification_spec, run_notification, requires="requests", import_error=IMPORT_ERROR)


def main() -> None:
    PLUGIN.main()


if __name__ == "__main__":
    main()
