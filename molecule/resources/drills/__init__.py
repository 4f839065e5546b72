"""The rehearsal drills behind the molecule scenarios (molecule/<scenario>/).

Each scenario is a drill we promise to survive. Its molecule playbooks call this package's command
line (`python -m drills ...`, PYTHONPATH=molecule/resources) to do what Ansible cannot do alone:
run the real `ansible-playbook rollback.yml -e env=local` exactly as an operator types it (the
repository's ansible.cfg, inventory and audit callback, the stack's connection details in the
environment) while the load generator sends steady traffic to both app instances; put a fault in
the way (a flag API answering 500 or 401, a long transaction holding a lock, SIGKILL of the
controller, a second rollback at the same time); and record what happened. The testinfra verifiers
(molecule/<scenario>/tests/) then check the real services: database, flag, instances, sinks, audit.

Where things are (all git-ignored, under .run/molecule/):
- `stack/`: the rehearsal stack every scenario shares (molecule `shared_state`).
- `<scenario>/`: `state.json` (what prepare and each run observed), `audit.jsonl` (the scenario's
  audit trail), `<run>.log` (each playbook's output), `load-<run>.jsonl` (the load series).
- `results/<scenario>.json`: the figures the benchmark reads (per-step durations, lock waits,
  propagation, requests and failures under load).
"""
