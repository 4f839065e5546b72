"""execution-environment.yml as ansible-builder itself sees it, offline.

`ansible-builder create` (the build context; no container engine needed), and
the introspection its build runs inside the image to merge the collections' own requirements with
ours, run here on the pinned collections. Only a real `ansible-builder build` (registry and container
engine) shows the image installs.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_builder import constants as builder_constants
from packaging.requirements import Requirement

from tests.unit.test_execution_environment import EE_FILE, PINNED_COLLECTIONS, ROOT, canonical, ee_python

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def build_context(tmp_path_factory) -> Path:
    context = tmp_path_factory.mktemp("ee") / "context"
    proc = subprocess.run(
        [
            str(BIN / "ansible-builder"),
            "create",
            "-f",
            str(EE_FILE),
            "-c",
            str(context),
            "--output-filename",
            "Containerfile",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return context


def test_builder_creates_a_context_with_our_requirements(build_context):
    build = build_context / "_build"
    requirements = [Requirement(line) for line in (build / "requirements.txt").read_text().split("\n") if line]
    assert {canonical(r.name): str(r.specifier) for r in requirements} == {
        name: str(r.specifier) for name, r in ee_python().items()
    }
    assert yaml.safe_load((build / "requirements.yml").read_text()) == yaml.safe_load(
        (ROOT / "collections" / "requirements.yml").read_text()
    )
    assert "ca-certificates" in (build / "bindep.txt").read_text()
    containerfile = (build_context / "Containerfile").read_text()
    assert 'ANSIBLE_INSTALL_REFS="ansible-core==2.19.14 ansible-runner==2.4.3"' in containerfile
    assert f'--collections-path "{builder_constants.base_collections_path}"' in containerfile
    assert 'ARG PYCMD="/usr/bin/python3.11"' in containerfile


def test_builder_introspection_merges_the_collections_requirements_as_intended(build_context, tmp_path):
    """The build's introspect step, run on the pinned collections: what the image will pip/dnf install."""
    collections = tmp_path / "collections" / "ansible_collections"
    for item in PINNED_COLLECTIONS:
        namespace, name = item["name"].split(".")
        source = Path(importlib.import_module(f"ansible_collections.{namespace}.{name}").__path__[0])
        (collections / namespace).mkdir(parents=True, exist_ok=True)
        (collections / namespace / name).symlink_to(source)
    build, out = build_context / "_build", tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(build / "scripts" / "introspect.py"),
            "introspect",
            str(collections.parent),
            "--user-pip=requirements.txt",
            "--exclude-pip-reqs=exclude-requirements.txt",
            "--user-bindep=bindep.txt",
            "--exclude-bindep-reqs=exclude-bindep.txt",
            "--exclude-collection-reqs=exclude-collections.txt",
            f"--write-pip={out / 'requirements.txt'}",
            f"--write-bindep={out / 'bindep.txt'}",
        ],
        cwd=build,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = [Requirement(line.split("#")[0]) for line in (out / "requirements.txt").read_text().splitlines() if line]
    names = {canonical(r.name) for r in final}
    assert set(ee_python()) <= names
    unwanted = names & {"pytest", "pytest-mock", "awxkit", "pytz"}
    assert not unwanted, f"test or unused packages would be installed: {unwanted}"
    assert "rsync" not in (out / "bindep.txt").read_text()
