"""execution-environment.yml holds everything the playbook imports, at the versions we test.

These tests read the files (with ansible-builder's own schema validation); tests/tooling/
test_ansible_builder.py runs ansible-builder itself on them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
import warnings
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import yaml
from ansible.plugins.loader import init_plugin_loader, module_loader
from ansible_builder.user_definition import UserDefinition
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
EE_FILE = ROOT / "execution-environment.yml"
BIN = Path(sys.executable).parent
EE = yaml.safe_load(EE_FILE.read_text())
PINNED_COLLECTIONS = yaml.safe_load((ROOT / "collections" / "requirements.yml").read_text())["collections"]
# The code that runs inside the execution environment.
RUNTIME_CODE = ["plugins", "migrations"]
# The Ansible content that runs there.
ANSIBLE_CONTENT = [ROOT / "rollback.yml", ROOT / "playbooks", ROOT / "roles"]
# Installing ansible-core provides these; the galaxy step provides ansible_collections.
PROVIDED = {"ansible", "ansible_collections"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.strip()
    return pins


def ee_python() -> dict[str, Requirement]:
    return {canonical(Requirement(line).name): Requirement(line) for line in EE["dependencies"]["python"]}


def test_builder_validates_the_definition():
    definition = UserDefinition(str(EE_FILE))
    definition.validate()  # ansible-builder's JSON schema and its own checks; raises DefinitionError
    assert definition.version == 3
    assert EE["dependencies"]["galaxy"] == "collections/requirements.yml"
    assert (EE_FILE.parent / EE["dependencies"]["galaxy"]).is_file()


def test_ansible_and_every_python_requirement_are_pinned_as_we_test_them():
    pins = lock_pins()
    for key in ("ansible_core", "ansible_runner"):
        requirement = Requirement(EE["dependencies"][key]["package_pip"])
        assert str(requirement.specifier) == f"=={pins[canonical(requirement.name)]}", requirement
    for name, requirement in ee_python().items():
        assert name in pins, f"{requirement} is not in requirements.lock: the tests do not run with it"
        assert str(requirement.specifier) == f"=={pins[name]}", f"{requirement}: requirements.lock has {pins[name]}"
    assert "ansible" not in ee_python(), "the EE installs ansible-core and only the collections we pin"


def test_the_dependencies_of_the_ee_requirements_are_pinned_too():
    """Otherwise the image resolves them to whatever is newest on the day of the build."""
    pinned = set(ee_python())
    environment = {"extra": "", "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
    for name in sorted(pinned):
        for line in distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            assert canonical(requirement.name) in pinned, f"{name} needs {requirement.name}: pin it in the EE"


def imported_top_level_modules(folder: Path) -> set[str]:
    modules = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_every_third_party_import_of_the_runtime_code_is_in_the_ee():
    distributions = packages_distributions()
    provided = {canonical(Requirement(EE["dependencies"]["ansible_core"]["package_pip"]).name)}
    required: dict[str, set[str]] = {}
    for folder in RUNTIME_CODE:
        for module in imported_top_level_modules(ROOT / folder) - set(sys.stdlib_module_names) - PROVIDED:
            assert module in distributions, f"{folder}/ imports {module}, which is not installed here either"
            required.setdefault(folder, set()).update(canonical(d) for d in distributions[module])
    missing = {folder: names - set(ee_python()) - provided for folder, names in required.items()}
    assert not any(missing.values()), f"imported but not in execution-environment.yml: {missing}"
    # The rollback's database stack is imported, so the check above is not vacuous.
    assert {"alembic", "sqlalchemy", "psycopg2-binary"} <= required.get("plugins", set()) | required.get(
        "migrations", set()
    )


def fqcns_used() -> tuple[set[str], set[str]]:
    """(module FQCNs used as task keys, collections referenced anywhere in the Ansible content)."""
    files = [p for target in ANSIBLE_CONTENT for p in ([target] if target.is_file() else target.rglob("*.yml"))]
    modules, collections = set(), set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and re.fullmatch(r"[a-z_]\w*\.[a-z_]\w*\.[a-z_]\w*", key):
                    if not key.startswith(("ansible.builtin.", "ansible.legacy.")):
                        modules.add(key)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in files:
        text = path.read_text()
        walk(yaml.load(text, Loader=_AnsibleTagLoader))  # noqa: S506 (a safe loader that accepts !unsafe/!vault)
        for namespace, name in re.findall(r"\b([a-z_]\w*)\.([a-z_]\w*)\.[a-z_]\w*", text):
            candidate = f"{namespace}.{name}"
            if _is_installed_collection(candidate):
                collections.add(candidate)
    collections |= {module.rsplit(".", 1)[0] for module in modules}
    return modules, collections - {"ansible.builtin", "ansible.legacy"}


class _AnsibleTagLoader(yaml.SafeLoader):
    pass


_AnsibleTagLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node))


def _is_installed_collection(name: str) -> bool:
    namespace, collection = name.split(".")
    try:
        spec = importlib.util.find_spec(f"ansible_collections.{namespace}.{collection}")
    except ModuleNotFoundError:
        return False
    return spec is not None


def test_every_collection_the_playbooks_use_is_pinned_and_provides_the_module():
    modules, collections = fqcns_used()
    pinned = {item["name"] for item in PINNED_COLLECTIONS}
    assert collections <= pinned, f"used but not in collections/requirements.yml: {sorted(collections - pinned)}"
    assert "awx.awx" in collections, "the scan found nothing: it would pass vacuously"
    with warnings.catch_warnings():  # another test module may have set up the collection loader already
        warnings.filterwarnings("ignore", "AnsibleCollectionFinder has already been configured")
        init_plugin_loader()
    for module in sorted(modules):
        assert module_loader.find_plugin_with_context(module).resolved, f"{module} is in no pinned collection"
