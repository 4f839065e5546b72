"""The conftest hook that makes the `integration` marker mandatory on tests that use a service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

USES_A_SERVICE = """\
{marker}

def test_reads_the_cluster(app_db):
    pass


def test_needs_nothing():
    pass
"""


def collect(tmp_path: Path, marker: str) -> subprocess.CompletedProcess:
    """Collect (never run) a test file with this repository's conftest loaded as a plugin."""
    test_file = tmp_path / "test_probe.py"
    test_file.write_text(USES_A_SERVICE.format(marker=marker))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
         "-p", "tests.conftest", "--collect-only", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_test_using_a_service_without_the_marker_fails_collection(tmp_path):
    proc = collect(tmp_path, "")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    error = (proc.stdout + proc.stderr).split("ERROR: ", 1)[-1]
    assert error.startswith("These tests use a service but lack the integration marker"), proc.stdout + proc.stderr
    assert "test_reads_the_cluster (uses app_db, app_template, pg_cluster)" in error
    assert "test_needs_nothing" not in error


def test_the_marker_on_the_module_satisfies_it(tmp_path):
    proc = collect(tmp_path, "import pytest\n\npytestmark = pytest.mark.integration")
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout + proc.stderr
    assert "2 tests collected" in proc.stdout
