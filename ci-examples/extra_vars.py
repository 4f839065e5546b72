"""Write a CI job's rollback inputs as an extra-vars file that Ansible reads as plain text.

    python3 ci-examples/extra_vars.py > "$RUNNER_TEMP/rollback-vars.yml"
    ansible-playbook rollback.yml -e @"$RUNNER_TEMP/rollback-vars.yml"

The inputs (ROLLBACK_INPUT_ENV, _REASON, _TICKET, _CONFIRM) are typed by whoever
launches the job: never put them into a shell command line (quoting, `-e key=value` splitting) and
never let Ansible template them (a reason containing "{{ lookup('pipe', ...) }}" would run on the
runner). Each value is written as a YAML double-quoted string tagged !unsafe, the way AWX passes
survey answers, so the playbook receives exactly the characters typed. Only the standard library
is used: it runs with any python3, inside the execution environment or not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# extra var of the rollback -> environment variable the CI job sets from its inputs
INPUTS = {
    "env": "ROLLBACK_INPUT_ENV",
    "reason": "ROLLBACK_INPUT_REASON",
    "ticket": "ROLLBACK_INPUT_TICKET",
    "confirm": "ROLLBACK_INPUT_CONFIRM",
}


def yaml_string(value: str) -> str:
    """A YAML double-quoted scalar of only printable ASCII: every other character is escaped."""
    out = []
    for char in value:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def extra_vars(environ: Mapping[str, str]) -> str:
    lines = ["---"]
    for variable, name in INPUTS.items():
        lines.append(f"{variable}: !unsafe {yaml_string(environ.get(name, ''))}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(extra_vars(os.environ))
