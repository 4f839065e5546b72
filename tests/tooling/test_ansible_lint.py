"""ansible-lint's production profile on the AWX configuration (playbooks/awx_configure.yml, awx/).

`make lint` runs it on the whole project; this test keeps the AWX configuration's part of that
promise in the test suite, next to tests/unit/test_awx_configuration.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOK = ROOT / "playbooks" / "awx_configure.yml"


def test_ansible_lint_production_profile():
    proc = subprocess.run(
        [str(BIN / "ansible-lint"), "--profile", "production", "--offline", "-q", str(PLAYBOOK), "awx/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_COLOR": "1"},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
