"""Stand-in for pip's get-pip.py, for ansible-test on a machine that reaches only the package registries.

ansible-test bootstraps pip into each sanity test's fresh virtual environment with get-pip.py, which
it downloads from its own file server (ansible_test/_util/target/setup/requirements.py: bootstrap)
unless the file is in its cache. tests/tooling/validate_modules.py puts this file there instead:
it installs the pip that ships with Python (ensurepip, no network), then runs the pip install that
get-pip.py would (same arguments: the pinned pip), from the package index pip is configured with.
"""

import subprocess
import sys

# get-pip.py options that pip install does not take.
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

# In a child process: ensurepip turns pip's configuration (the registry mirror) off in its own process.
subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
arguments = [argument for argument in sys.argv[1:] if argument not in GET_PIP_ONLY]
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *arguments], check=True)
