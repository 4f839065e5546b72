"""collections/requirements.yml must describe the collections we actually run with.

AWX and execution environments install from that file, while our machines take the collections from
the `ansible` wheel: when a bump of one no longer matches the other, this fails and says which.
"""

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml
from ansible.galaxy.dependency_resolution.versioning import meets_requirements

ROOT = Path(__file__).resolve().parents[2]
PINNED = yaml.safe_load((ROOT / "collections" / "requirements.yml").read_text())["collections"]


def installed_version(fqcn: str) -> str:
    namespace, name = fqcn.split(".")
    manifest = resources.files(f"ansible_collections.{namespace}.{name}") / "MANIFEST.json"
    return json.loads(manifest.read_text())["collection_info"]["version"]


def test_requirements_pin_every_collection_the_project_uses():
    used = set()
    for path in ROOT.glob("**/*.yml"):
        if any(part in {".venv", "node_modules", ".cache", ".run"} for part in path.parts):
            continue
        text = path.read_text()
        for fqcn in ("community.general", "community.postgresql", "ansible.posix", "awx.awx"):
            if f"{fqcn}." in text and path.name != "requirements.yml":
                used.add(fqcn)
    pinned = {item["name"] for item in PINNED}
    assert used <= pinned, f"used but not pinned in collections/requirements.yml: {sorted(used - pinned)}"


@pytest.mark.parametrize("item", PINNED, ids=[item["name"] for item in PINNED])
def test_installed_collection_satisfies_pin(item):
    version = installed_version(item["name"])
    assert meets_requirements(version, str(item["version"])), (
        f"{item['name']} {version} is installed but collections/requirements.yml asks for {item['version']}: "
        "update the pin (or requirements.lock) so AWX runs what we test"
    )
