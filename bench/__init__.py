"""Benchmarks of the emergency rollback: `python -m bench` (or `make bench`) writes bench/RESULTS.md.

Our module_utils import each other as `ansible.module_utils.<name>`, as Ansible packages them;
`use_module_utils()` extends that package's path (as tests/conftest.py does) so that the floor
(bench/floor.py) runs exactly the code the modules run, without Ansible.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"


def use_module_utils() -> None:
    import ansible.module_utils  # noqa: PLC0415 - only the floor and the redeploy need it

    path = str(ROOT / "plugins" / "module_utils")
    if path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(path)
