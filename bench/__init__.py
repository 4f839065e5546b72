"""Benchmarks of the emergency rollback: `python -m bench` (or `make bench`) writes bench/RESULTS.md.

The project measured is this repository, or another copy of its playbook (`--project DIR`, passed
on to every child as BENCH_PROJECT): rollback.yml, playbooks/, roles/, plugins/, inventories/,
ansible.cfg and migrations/ are taken from there; the rehearsal stack and the bench from here.

Our module_utils import each other as `ansible.module_utils.<name>`, as Ansible packages them;
`use_module_utils()` extends that package's path (as tests/conftest.py does) with the project's
module_utils, so that the floor (bench/floor.py) runs exactly the code the modules run, without Ansible.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
PROJECT_ENV = "BENCH_PROJECT"


def project() -> Path:
    """The copy of the playbook measured: BENCH_PROJECT, or this repository."""
    return Path(os.environ.get(PROJECT_ENV) or ROOT).resolve()


def use_module_utils() -> None:
    from plugins.plugin_utils.module_utils_path import add_module_utils_path  # noqa: PLC0415 - floor and redeploy

    add_module_utils_path(project())
