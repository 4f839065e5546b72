# Copyright: contributors to the emergency-rollback runbook
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Make the runbook's module_utils importable as `ansible.module_utils.<name>` in a controller process.

Modules import their helpers as `ansible.module_utils.<name>`, the name under which AnsiballZ ships
them (ansible.cfg's `module_utils = plugins/module_utils`). Code that runs on the controller - the
action plugins, the audit callback, the tests, the drills and the benchmark - imports the same
files under the same names, so that each file is loaded once and its state is shared. This is the
one place that extends the package's search path for them.

The action plugins and the callback are loaded by Ansible from their folders, where this file is
not importable by name: they run it by location,
`runpy.run_path(<plugins>/plugin_utils/module_utils_path.py)["add_module_utils_path"]()`.
"""

from __future__ import annotations

from pathlib import Path

MODULE_UTILS = Path(__file__).resolve().parent.parent / "module_utils"


def add_module_utils_path(project: str | Path | None = None) -> str:
    """Add <project>/plugins/module_utils (default: this repository's) to `ansible.module_utils.__path__`
    (once); returns the folder. The benchmark passes the copy of the project it measures."""
    import ansible.module_utils  # noqa: PLC0415 - only when asked

    folder = str(Path(project).resolve() / "plugins" / "module_utils" if project else MODULE_UTILS)
    if folder not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(folder)
    return folder
