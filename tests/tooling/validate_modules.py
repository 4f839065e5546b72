"""ansible-core's own module checker (`ansible-test sanity --test validate-modules`) on our plugins/.

    .venv/bin/python -m tests.tooling.validate_modules          # prints the problems; exit 1 if any
    .venv/bin/python -m tests.tooling.validate_modules --keep   # and keeps the collection copy
    .venv/bin/python -m tests.tooling.validate_modules --plugins /tmp/branch/plugins   # another tree

ansible-test checks collections: it must run inside `ansible_collections/<namespace>/<name>`. The
repository keeps its top-level layout (ansible.cfg points at plugins/), so this copies plugins/ into
a temporary collection tree and runs the sanity test there. What the copy changes: the imports of
our own module_utils, `ansible.module_utils.<ours>` (how ansible.cfg's module_utils path serves them),
become the collection's `ansible_collections.<namespace>.<name>.plugins.module_utils.<ours>`; and
the documentation's references to our own modules and doc fragments, `M(<ours>)`,
`seealso: - module: <ours>` and `extends_documentation_fragment: - <ours>` (short names, as
ansible.cfg's library and doc_fragment paths serve them), become the collection's FQCNs, which is
what validate-modules requires of a collection. Nothing else changes.

Known problems: KNOWN_PROBLEMS below, written into the copy as ansible-test's own ignore file
(tests/sanity/ignore-<ansible-core version>.txt). ansible-test fails on an entry that is no longer
needed, so the list can only shrink; it is to be empty.

Offline: ansible-test normally builds a virtual environment for each sanity test and installs its
pinned requirements, bootstrapping pip from the internet. These machines reach only the package
registries, so it runs with `--python <this interpreter>` and without `--requirements` (nothing
installed): the test runs in this virtual environment, whose requirements.lock pins what
validate-modules imports (voluptuous, antsibull-docs-parser, Jinja2, PyYAML). `ANSIBLE_TEST_PREFER_VENV`
and other settings are not needed. docs/validate-modules.md says more.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
NAMESPACE, NAME = "ops", "emergency_rollback"
BIN = Path(sys.executable).parent
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

GALAXY = """\
namespace: {namespace}
name: {name}
version: 1.0.0
readme: README.md
authors:
  - Operations <ops@example.com>
description: The emergency-rollback runbook's plugins (a copy made for ansible-test)
license:
  - GPL-3.0-or-later
"""


# (path, validate-modules error code) ansible-test is told to ignore, until fixed.
KNOWN_PROBLEMS: tuple[tuple[str, str], ...] = ()


def our_module_utils(plugins: Path = PLUGINS) -> list[str]:
    return sorted(path.stem for path in (plugins / "module_utils").glob("*.py") if path.stem != "__init__")


def rewrite_imports(text: str, names: list[str]) -> str:
    """`ansible.module_utils.<ours>` -> the collection's module_utils; ansible-core's own stay."""
    target = f"ansible_collections.{NAMESPACE}.{NAME}.plugins.module_utils"
    pattern = re.compile(r"\bansible\.module_utils\.(" + "|".join(map(re.escape, names)) + r")\b")
    return pattern.sub(lambda match: f"{target}.{match.group(1)}", text)


def qualify_references(text: str, modules: list[str], fragments: list[str] = ()) -> str:
    """Our modules and doc fragments, named short, -> the collection's FQCNs; everything else stays.

    `M(<module>)` in text, `- module: <module>` (seealso) and `- <fragment>` (the list of
    extends_documentation_fragment) are the references the documentation makes to our own plugins.
    """
    fqcn = f"{NAMESPACE}.{NAME}"
    if modules:
        names = "|".join(map(re.escape, modules))
        text = re.sub(r"\bM\((" + names + r")\)", lambda match: f"M({fqcn}.{match.group(1)})", text)
        text = re.sub(r"^(\s*-\s*module:\s*)(" + names + r")\s*$", lambda m: f"{m.group(1)}{fqcn}.{m.group(2)}",
                      text, flags=re.MULTILINE)  # fmt: skip
    if fragments:
        names = "|".join(map(re.escape, fragments))
        text = re.sub(r"^(\s*-\s*)(" + names + r")\s*$", lambda m: f"{m.group(1)}{fqcn}.{m.group(2)}", text,
                      flags=re.MULTILINE)  # fmt: skip
    return text


def ignore_file() -> str:
    from ansible.release import __version__  # noqa: PLC0415

    major_minor = ".".join(__version__.split(".")[:2])
    return f"tests/sanity/ignore-{major_minor}.txt"


def collection_copy(parent: Path, plugins: Path = PLUGINS) -> Path:
    """A collection made of plugins/, under parent/ansible_collections/<namespace>/<name>; returns its root."""
    root = parent / "ansible_collections" / NAMESPACE / NAME
    names = our_module_utils(plugins)
    modules = sorted(path.stem for path in (plugins / "modules").glob("*.py"))
    fragments = sorted(path.stem for path in (plugins / "doc_fragments").glob("*.py"))
    for source in sorted(plugins.rglob("*.py")):
        if "__pycache__" in source.parts:
            continue
        destination = root / "plugins" / source.relative_to(plugins)
        destination.parent.mkdir(parents=True, exist_ok=True)
        text = qualify_references(rewrite_imports(source.read_text(), names), modules, fragments)
        destination.write_text(text)  # symlinks become files
    ignores = root / ignore_file()
    ignores.parent.mkdir(parents=True)
    ignores.write_text("".join(f"{path} validate-modules:{code}\n" for path, code in KNOWN_PROBLEMS))
    (root / "galaxy.yml").write_text(GALAXY.format(namespace=NAMESPACE, name=NAME))
    (root / "meta").mkdir()
    (root / "meta" / "runtime.yml").write_text("---\nrequires_ansible: '>=2.19.0'\n")
    shutil.copy(ROOT / "README.md", root / "README.md")
    shutil.copy(ROOT / "LICENSE", root / "LICENSE")
    return root


def offline_home() -> Path:
    """ansible-test's home (its caches and sanity virtual environments), with the offline pip bootstrap."""
    from ansible_test._internal.python_requirements import get_venv_packages  # noqa: PLC0415

    home = ROOT / ".cache" / "ansible-test"
    # pip inside ansible-test's environments reads its user configuration from this home: the
    # caller's (e.g. the registry mirror), copied.
    for config in (Path.home() / ".config" / "pip" / "pip.conf", Path.home() / ".pip" / "pip.conf"):
        if config.is_file():
            copy = home / config.relative_to(Path.home())
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(config, copy)
    pip_version = get_venv_packages(argparse.Namespace(version=PYTHON))["pip"]
    bootstrap = home / ".ansible" / "test" / "cache" / f"get_pip_{pip_version.replace('.', '_')}.py"
    bootstrap.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("get_pip_offline.py"), bootstrap)
    return home


def validate_modules(collection: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HOME": str(offline_home()),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": str(collection.parents[2]),
        "NO_COLOR": "1",
    }
    env.pop("ANSIBLE_CONFIG", None)  # the project's ansible.cfg would put plugins/ on the search path too
    return subprocess.run(
        [str(BIN / "ansible-test"), "sanity", "--test", "validate-modules", "--python", PYTHON, "--color", "no"],
        cwd=collection,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def problems(output: str) -> list[str]:
    """The problem lines of ansible-test's report (`ERROR: plugins/...:line:col: code: message`)."""
    return [line.removeprefix("ERROR: ") for line in output.splitlines() if line.startswith("ERROR: plugins/")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the collection copy and print where it is")
    parser.add_argument("--plugins", type=Path, default=PLUGINS, help="another plugins/ folder (e.g. a branch's)")
    args = parser.parse_args(argv)
    parent = Path(tempfile.mkdtemp(prefix="validate-modules-"))
    try:
        proc = validate_modules(collection_copy(parent, args.plugins.resolve()))
        found = problems(proc.stdout + proc.stderr)
        sys.stdout.write(proc.stdout + proc.stderr)
        print(f"validate-modules: {len(found)} problem(s), ansible-test exit {proc.returncode}")
        return 0 if proc.returncode == 0 and not found else 1
    finally:
        if args.keep:
            print(f"collection copy kept in {parent}")
        else:
            shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
