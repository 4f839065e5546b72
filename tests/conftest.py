"""Shared test set-up.

- Our module_utils import each other as `ansible.module_utils.<name>`, as Ansible packages them;
  extending that package's path lets unit tests import them the same way, without Ansible running.
- Every file in tests/fixtures/ is a pytest plugin: session fixtures for the real services
  (PostgreSQL, Unleash, the rehearsal stack) live there, one file per service, started once.
"""

from pathlib import Path

from plugins.plugin_utils.module_utils_path import add_module_utils_path

ROOT = Path(__file__).resolve().parent.parent
add_module_utils_path()

FIXTURES = sorted(path.stem for path in (ROOT / "tests" / "fixtures").glob("*.py") if path.stem != "__init__")
pytest_plugins = [
    *(f"tests.fixtures.{name}" for name in FIXTURES),
    "tests.fakes.fixtures",  # the contract fakes (LaunchDarkly, in-house flag API, app /status)
]
