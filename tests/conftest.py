"""Shared test set-up.

- Our module_utils import each other as `ansible.module_utils.<name>`, as Ansible packages them;
  extending that package's path lets unit tests import them the same way, without Ansible running.
- Every file in tests/fixtures/ is a pytest plugin: session fixtures for the real services
  (PostgreSQL, Unleash, the rehearsal stack) live there, one file per service, started once.
- A test that uses a service fixture, directly or through another fixture, must carry the
  `integration` marker (so that `pytest -m "not integration"` runs without services): collection
  fails otherwise, naming the tests.
"""

from pathlib import Path

import pytest

from plugins.plugin_utils.module_utils_path import add_module_utils_path

ROOT = Path(__file__).resolve().parent.parent
add_module_utils_path()

FIXTURES = sorted(path.stem for path in (ROOT / "tests" / "fixtures").glob("*.py") if path.stem != "__init__")
pytest_plugins = [
    *(f"tests.fixtures.{name}" for name in FIXTURES),
    "tests.fakes.fixtures",  # the contract fakes (LaunchDarkly, Optimizely, in-house flag API, app /status)
]

# The fixture modules that start a real service: every fixture they define is a service fixture.
SERVICE_FIXTURE_MODULES = frozenset(
    {
        "tests.fixtures.efcore",
        "tests.fixtures.postgres",
        "tests.fixtures.prometheus",
        "tests.fixtures.schema",
        "tests.fixtures.stack",
        "tests.fixtures.unleash",
    }
)


def services_used(item: pytest.Item) -> list[str]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    return sorted(
        name
        for name, definitions in info.name2fixturedefs.items()
        if definitions and definitions[-1].func.__module__ in SERVICE_FIXTURE_MODULES
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        f"{item.nodeid} (uses {', '.join(used)})"
        for item in items
        if (used := services_used(item)) and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "These tests use a service but lack the integration marker: add "
            "`pytestmark = pytest.mark.integration` to their module:\n  " + "\n  ".join(unmarked)
        )
