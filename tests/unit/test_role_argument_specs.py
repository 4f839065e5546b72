"""Every role declares, in meta/argument_specs.yml, every variable it reads, with the type the plugin takes.

For each role and each tasks file (one entry point each: tasks/<entry>.yml is `tasks_from: <entry>`), the
test reads every Jinja template and bare expression (`when`, `that`, `failed_when`, ...) with Jinja's own
parser and lists the variables it reads. Each must be declared in that entry point's options, unless
the role sets it itself or it is one of Ansible's own names (ALLOWED below). The role's vars/main.yml
is read by every entry point. Where a task passes a declared variable straight to one of the runbook's
plugins (`option: "{{ variable }}"`), the declared type must be the type the plugin's argument spec
takes (a float option takes 0.5: an `int` declaration would refuse it).
"""

from __future__ import annotations

import re
import runpy
from functools import cache
from pathlib import Path

import jinja2
import jinja2.meta
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(path.parent.parent for path in (ROOT / "roles").glob("*/meta/argument_specs.yml"))

# Names a role may read without declaring them: Ansible's magic variables and Jinja's global
# functions (a role input is never one of these). Keep this list short: anything else is an input.
ALLOWED = frozenset(
    {
        # Ansible's magic variables (docs: "Special Variables")
        "ansible_check_mode",
        "ansible_failed_result",
        "ansible_playbook_python",
        "group_names",
        "groups",
        "hostvars",
        "inventory_hostname",
        "item",
        "omit",
        "playbook_dir",
        # Jinja globals: Ansible's lookup/query/now and Jinja's own
        "dict",
        "lookup",
        "now",
        "q",
        "query",
        "range",
    }
)
# Keys of a task whose string value is a bare Jinja expression, not a template.
EXPRESSION_KEYS = frozenset({"when", "that", "failed_when", "changed_when", "until"})
TASK_CONTAINERS = ("block", "rescue", "always")


class AnyName(dict):
    """Every filter and test name exists: the parser only needs to know the template is well formed."""

    def __contains__(self, name) -> bool:
        return True

    def get(self, name, default=None):
        return super().get(name, str)


JINJA = jinja2.Environment(autoescape=False)  # noqa: S701 - parsing only, nothing is rendered
JINJA.filters = AnyName(JINJA.filters)
JINJA.tests = AnyName(JINJA.tests)


def referenced(value, *, expression: bool = False) -> set[str]:
    """The variables a YAML value reads (templates in strings, recursively in lists and dicts)."""
    if isinstance(value, str):
        if expression:
            value = "{{ " + value + " }}"
        elif "{{" not in value and "{%" not in value:
            return set()
        return set(jinja2.meta.find_undeclared_variables(JINJA.parse(value)))
    if isinstance(value, list):
        return set().union(*(referenced(item, expression=expression) for item in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(referenced(item) for item in value.values())) if value else set()
    return set()


def walk(tasks: list[dict]):
    for task in tasks or []:
        yield task
        for key in TASK_CONTAINERS:
            yield from walk(task.get(key))


# `{{ variable }}` or `{{ variable | default(...) }}`: the variable's value goes to the option as it is.
PASSED_AS_IS = re.compile(r"^\{\{\s*([A-Za-z_]\w*)\s*(\|\s*default\([^|]*\))?\s*\}\}$")


def passed_as_is(plugin: str, arguments: dict, role_vars: dict) -> list[tuple[str, str, str]]:
    """[(plugin, option, variable)] for the arguments that are one variable (through vars/main.yml's dicts)."""
    out = []
    for option, argument in arguments.items():
        match = PASSED_AS_IS.match(argument.strip()) if isinstance(argument, str) else None
        if match:
            out.append((plugin, option, match.group(1)))
    return out


def reads_and_sets(tasks: list[dict], role_vars: dict | None = None) -> tuple[set[str], set[str], list]:
    """(names read, names the file sets itself, [(plugin, option, variable)] passed straight to a plugin)."""
    role_vars = role_vars or {}
    reads: set[str] = set()
    sets: set[str] = set()
    passed: list[tuple[str, str, str]] = []
    for task in walk(tasks):
        sets.update(task.get("vars") or {})
        if "register" in task:
            sets.add(task["register"])
        sets.add((task.get("loop_control") or {}).get("loop_var", "item"))
        for plugin, defaults in (task.get("module_defaults") or {}).items():
            match = PASSED_AS_IS.match(defaults.strip()) if isinstance(defaults, str) else None
            if match and isinstance(role_vars.get(match.group(1)), dict):
                passed += passed_as_is(plugin, role_vars[match.group(1)], role_vars)
        for key, value in task.items():
            if key in TASK_CONTAINERS or key in {"name", "register", "tags", "loop_control"}:
                continue
            reads |= referenced(value, expression=key in EXPRESSION_KEYS)
            if key in {"set_fact", "ansible.builtin.set_fact"}:
                sets.update(value)
            elif isinstance(value, dict):
                passed += passed_as_is(key, value, role_vars)
    return reads, sets, passed


@cache
def plugin_options(name: str) -> dict | None:
    """The argument spec of one of the runbook's plugins (None for anything else)."""
    module = ROOT / "plugins" / "modules" / f"{name}.py"
    if not module.exists():
        return None
    return runpy.run_path(str(module), run_name="argument_spec_test")["PLUGIN"].spec()["argument_spec"]


def load(path: Path):
    return yaml.safe_load(path.read_text()) if path.exists() else None


def entry_points(role: Path) -> dict[str, dict]:
    return load(role / "meta" / "argument_specs.yml")["argument_specs"]


def role_sets(role: Path) -> set[str]:
    """Everything any tasks file of the role registers or sets, and the role's vars/main.yml."""
    names = set(load(role / "vars" / "main.yml") or {})
    for path in (role / "tasks").glob("*.yml"):
        names |= reads_and_sets(load(path))[1]
    return names


def undeclared(role: Path, entry: str) -> list[str]:
    """The variables the entry point reads that its argument spec does not declare."""
    options = entry_points(role)[entry].get("options") or {}
    reads, sets, _ = reads_and_sets(load(role / "tasks" / f"{entry}.yml"))
    role_vars = load(role / "vars" / "main.yml") or {}
    shared = referenced(role_vars) - role_sets(role)
    return sorted((reads - sets - set(role_vars) | shared) - ALLOWED - set(options))


CASES = [(role, entry) for role in ROLES for entry in entry_points(role)]
IDS = [f"{role.name}:{entry}" for role, entry in CASES]


def test_every_tasks_file_is_an_entry_point_with_a_spec():
    for role in ROLES:
        files = {path.stem for path in (role / "tasks").glob("*.yml")}
        assert files == set(entry_points(role)), f"{role.name}: tasks files and argument_specs entry points differ"


@pytest.mark.parametrize(("role", "entry"), CASES, ids=IDS)
def test_every_variable_an_entry_point_reads_is_declared(role, entry):
    missing = undeclared(role, entry)
    assert not missing, f"{role.name} ({entry}) reads {missing}: declare them in {role.name}/meta/argument_specs.yml"


@pytest.mark.parametrize(("role", "entry"), CASES, ids=IDS)
def test_declared_types_are_the_types_the_plugins_take(role, entry):
    options = entry_points(role)[entry].get("options") or {}
    _, _, passed = reads_and_sets(load(role / "tasks" / f"{entry}.yml"), load(role / "vars" / "main.yml"))
    checked = 0
    for plugin, option, variable in passed:
        spec = plugin_options(plugin)
        if spec is None or variable not in options or option not in spec:
            continue
        checked += 1
        declared, takes = options[variable].get("type", "str"), spec[option].get("type", "str")
        assert declared in {takes, "raw"}, (
            f"{role.name} ({entry}): {variable} is declared {declared} but {plugin}'s {option} takes {takes}"
        )
    # The check sees what it should: the schema step's six tunables, notify's channel settings (module_defaults).
    assert checked >= {("rollback_schema", "main"): 6, ("rollback_notify", "main"): 10}.get((role.name, entry), 0)


def test_every_declared_variable_has_a_description_and_a_type():
    for role in ROLES:
        for entry, spec in entry_points(role).items():
            assert spec.get("short_description"), f"{role.name} ({entry}) has no short_description"
            for name, option in (spec.get("options") or {}).items():
                assert option.get("description") and option.get("type"), f"{role.name} ({entry}): {name}"


def test_defaults_are_declared_with_the_same_default():
    for role in ROLES:
        defaults = load(role / "defaults" / "main.yml") or {}
        for entry, spec in entry_points(role).items():
            options = spec.get("options") or {}
            for name in set(defaults) & set(options):
                assert options[name].get("default") == defaults[name], f"{role.name} ({entry}): {name}"


def test_the_checker_sees_a_missing_declaration(tmp_path):
    """The test above can fail: a role whose spec lacks a variable its tasks read is reported."""
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "tasks").mkdir()
    (role / "meta" / "argument_specs.yml").write_text(
        "argument_specs:\n  main:\n    short_description: demo\n    options:\n"
        "      rollback_demo_a: {type: str, description: a}\n"
    )
    (role / "tasks" / "main.yml").write_text(
        '- name: Use them\n  ansible.builtin.debug:\n    msg: "{{ rollback_demo_a ~ rollback_demo_b }}"\n'
        "  when: rollback_demo_c | bool and groups | length > 0\n  register: demo_result\n"
        "- name: Read the result\n  ansible.builtin.debug:\n    var: demo_result\n  when: demo_result is defined\n"
    )
    assert undeclared(role, "main") == ["rollback_demo_b", "rollback_demo_c"]
