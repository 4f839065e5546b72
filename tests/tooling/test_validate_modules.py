"""ansible-core's own module checker passes on our plugins (tests/tooling/validate_modules.py).

`ansible-test sanity --test validate-modules`, offline, on a collection-shaped copy of plugins/: every
module's DOCUMENTATION, EXAMPLES and RETURN against the schema ansible-doc and Galaxy use, the
documented options against the argument spec the module really builds, markup, licence headers.
The problems not yet fixed are listed in validate_modules.KNOWN_PROBLEMS, which ansible-test itself
refuses to keep once an entry is no longer needed.
"""

from __future__ import annotations

import shutil

import pytest

from tests.tooling import validate_modules as vm


@pytest.fixture
def collection(tmp_path):
    return vm.collection_copy(tmp_path)


def test_validate_modules_passes(collection):
    proc = vm.validate_modules(collection)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and not vm.problems(output), output


def test_a_documentation_problem_fails_it(collection):
    """The documented default of an option differs from the module's argument spec."""
    module = collection / "plugins" / "modules" / "schema_state.py"
    text = module.read_text()
    documented = "    type: bool\n    default: false\n"
    assert documented in text
    module.write_text(text.replace(documented, "    type: bool\n    default: true\n", 1))
    proc = vm.validate_modules(collection)
    found = vm.problems(proc.stdout + proc.stderr)
    assert proc.returncode != 0
    assert any(line.startswith("plugins/modules/schema_state.py:") and "doc-default-does-not-match-spec" in line
               for line in found), found  # fmt: skip


def test_an_ignore_entry_no_longer_needed_fails_it(collection):
    """The known problems can only shrink: ansible-test reports an entry that matches nothing."""
    ignores = collection / vm.ignore_file()
    ignores.write_text(ignores.read_text() + "plugins/modules/schema_state.py validate-modules:no-log-needed\n")
    proc = vm.validate_modules(collection)
    assert proc.returncode != 0
    assert "Ignoring 'no-log-needed' on 'plugins/modules/schema_state.py' is unnecessary" in proc.stdout + proc.stderr


def test_the_copy_addresses_our_code_by_the_collection_name_and_nothing_else():
    names = ["flag_switch", "pg_options"]
    source = (
        "from ansible.module_utils.basic import AnsibleModule\n"
        "from ansible.module_utils.flag_switch import switch\n"
        "import ansible.module_utils.pg_options as pg\n"
        "from ansible.module_utils.common.text.converters import to_text\n"
    )
    assert vm.rewrite_imports(source, names) == (
        "from ansible.module_utils.basic import AnsibleModule\n"
        "from ansible_collections.ops.emergency_rollback.plugins.module_utils.flag_switch import switch\n"
        "import ansible_collections.ops.emergency_rollback.plugins.module_utils.pg_options as pg\n"
        "from ansible.module_utils.common.text.converters import to_text\n"
    )
    docs = (
        "  - See M(schema_state) and M(ansible.builtin.copy).\nseealso:\n  - module: schema_state\n  - module: x.y.z\n"
    )
    assert vm.qualify_references(docs, ["schema_state"]) == (
        "  - See M(ops.emergency_rollback.schema_state) and M(ansible.builtin.copy).\n"
        "seealso:\n  - module: ops.emergency_rollback.schema_state\n  - module: x.y.z\n"
    )


def test_every_plugin_is_copied(collection):
    copied = {path.relative_to(collection / "plugins") for path in (collection / "plugins").rglob("*.py")}
    expected = {path.relative_to(vm.PLUGINS) for path in vm.PLUGINS.rglob("*.py") if "__pycache__" not in path.parts}
    assert copied == expected
    assert not any(path.is_symlink() for path in (collection / "plugins").rglob("*.py"))
    assert shutil.which("ansible-test", path=str(vm.BIN))
