"""The audit log's hash chain: sealing, appending under a lock, and naming the first broken record."""

from __future__ import annotations

import fcntl
import grp
import json
import multiprocessing
import os
import stat
import subprocess
import sys

import pytest
from ansible.module_utils import audit_chain as ac

RUN_A = "run-a"
RUN_B = "run-b"


def write_runs(path, *runs, outcome="succeeded"):
    """Append start+end records for each run id, one after the other."""
    for run_id in runs:
        ac.append_record(str(path), {"kind": "start", "run_id": run_id, "playbook": "rollback.yml"})
        ac.append_record(str(path), {"kind": "end", "run_id": run_id, "playbook": "rollback.yml", "outcome": outcome})


def lines_of(path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def store(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_records_are_canonical_and_chained(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A, RUN_B)
    lines = lines_of(path)
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert records[0]["prev_sha256"] == ac.ZERO_SHA256
    for prev, record in zip(lines, records[1:], strict=False):
        assert record["prev_sha256"] == ac.sha256_hex(prev)
    for line, record in zip(lines, records, strict=True):
        assert ac.canonical(record) == line
        assert record["sha256"] == ac.sha256_hex(ac.canonical({k: v for k, v in record.items() if k != "sha256"}))
    report = ac.verify_file(str(path))
    assert report.ok and report.summary() == "ok: 4 records, 2 runs, 0 aborted"
    assert report.head_sha256 == ac.sha256_hex(lines[-1])


def test_file_is_created_0600_in_a_0700_directory(tmp_path):
    path = tmp_path / "new" / "deeper" / "audit.jsonl"
    ac.append_record(str(path), {"kind": "start", "run_id": RUN_A})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_audit_group_gets_0640_and_0750(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "new" / "audit.jsonl"
    ac.append_record(str(path), {"kind": "start", "run_id": RUN_A}, group=group)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert path.stat().st_gid == os.getgid()


def test_unknown_group_is_one_sentence(tmp_path):
    with pytest.raises(ac.AuditWriteError, match="audit group 'no-such-group-xyz' does not exist"):
        ac.append_record(str(tmp_path / "a.jsonl"), {"kind": "start", "run_id": RUN_A}, group="no-such-group-xyz")
    assert not (tmp_path / "a.jsonl").exists()


def test_existing_file_mode_is_left_alone_and_only_appended(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A)
    before = path.read_bytes()
    write_runs(path, RUN_B)
    assert path.read_bytes().startswith(before)


def test_unwritable_path_raises_a_typed_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ac.AuditWriteError, match="cannot create"):
        ac.append_record(str(blocker / "audit.jsonl"), {"kind": "start", "run_id": RUN_A})
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(ac.AuditWriteError):
        ac.append_record(str(tmp_path / "dir.jsonl"), {"kind": "start", "run_id": RUN_A})


def test_lock_held_elsewhere_times_out(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A)
    with open(path, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(ac.AuditWriteError, match="another process held it"):
            ac.append_record(str(path), {"kind": "start", "run_id": RUN_B}, lock_timeout=0.2)
    assert ac.verify_file(str(path)).records == 2


def _append_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        ac.append_record(path, {"kind": "start", "run_id": f"w{worker}-{i}"})
        ac.append_record(path, {"kind": "end", "run_id": f"w{worker}-{i}", "outcome": "succeeded"})


def test_concurrent_processes_keep_the_chain_valid(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(path, w, 15)) for w in range(4)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(60)
        assert proc.exitcode == 0
    report = ac.verify_file(path)
    assert report.ok, report.summary()
    assert report.summary() == "ok: 120 records, 60 runs, 0 aborted"


# -- the first broken record -----------------------------------------------------------------


@pytest.fixture
def chain_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A, RUN_B, "run-c")
    return path


def broken(path):
    report = ac.verify_file(str(path))
    assert not report.ok
    return report.broken


def test_edited_value(chain_file):
    lines = lines_of(chain_file)
    lines[3] = lines[3].replace(b'"succeeded"', b'"failed at schema"')
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.run_id, b.reason) == (4, RUN_B, "edited")
    assert "sha256 does not match" in b.detail


def test_edited_and_resealed_is_named_at_the_edited_line(chain_file):
    lines = lines_of(chain_file)
    record = json.loads(lines[1])
    record["outcome"] = "aborted by signal SIGTERM"
    record["sha256"] = ac.record_sha256(record)
    lines[1] = ac.canonical(record)
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.run_id, b.reason) == (2, RUN_A, "edited")
    assert "re-sealed" in b.detail


def test_reformatted_line_is_an_edit(chain_file):
    lines = lines_of(chain_file)
    lines[0] = json.dumps(json.loads(lines[0]), indent=None).encode()
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.reason) == (1, "edited")


def test_deleted_record_in_the_middle(chain_file):
    lines = lines_of(chain_file)
    del lines[2]
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.run_id, b.reason) == (3, RUN_B, "deleted")
    assert "1 record(s)" in b.detail


def test_deleted_first_records(chain_file):
    store(chain_file, lines_of(chain_file)[2:])
    b = broken(chain_file)
    assert (b.line, b.reason) == (1, "deleted")
    assert "start of the file" in b.detail


def test_swapped_records(chain_file):
    lines = lines_of(chain_file)
    lines[2], lines[3] = lines[3], lines[2]
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.reason) == (3, "reordered")


def test_record_moved_to_the_end(chain_file):
    lines = lines_of(chain_file)
    lines.append(lines.pop(1))
    store(chain_file, lines)
    b = broken(chain_file)
    assert b.reason == "reordered"
    assert b.line == 2


def test_not_json_line(chain_file):
    lines = lines_of(chain_file)
    lines.insert(2, b"hello auditor")
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.run_id, b.reason) == (3, None, "not JSON")


def test_torn_last_line_is_kept_and_reported(chain_file):
    with open(chain_file, "ab") as handle:
        handle.write(b'{"kind":"start","run_')  # a write cut short by a crash
    ac.append_record(str(chain_file), {"kind": "start", "run_id": "run-d"})
    lines = lines_of(chain_file)
    assert lines[6] == b'{"kind":"start","run_'
    assert json.loads(lines[7])["prev_sha256"] == ac.sha256_hex(lines[6])
    b = broken(chain_file)
    assert (b.line, b.reason) == (7, "not JSON")


def test_record_without_its_fields_is_an_edit(chain_file):
    lines = lines_of(chain_file)
    record = json.loads(lines[0])
    del record["seq"]
    lines[0] = ac.canonical(record)
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.reason) == (1, "edited")
    assert "seq" in b.detail


def test_message_names_line_run_and_reason(chain_file):
    lines = lines_of(chain_file)
    del lines[2]
    store(chain_file, lines)
    assert ac.verify_file(str(chain_file)).summary().startswith(f"broken at line 3 (run {RUN_B}): deleted: ")


def test_missing_file_is_one_sentence(tmp_path):
    with pytest.raises(ac.AuditError, match="does not exist"):
        ac.verify_file(str(tmp_path / "nope.jsonl"))


def test_empty_file_is_an_intact_empty_chain(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"")
    assert ac.verify_file(str(tmp_path / "a.jsonl")).summary() == "ok: 0 records, 0 runs, 0 aborted"


# -- runs without an end record ----------------------------------------------------------------


def dead_controller() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return {"host": ac.controller_identity()["host"], "pid": proc.pid, "pid_start": 1}


def test_start_without_end_is_aborted_unless_its_controller_lives(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A)
    ac.append_record(str(path), {"kind": "start", "run_id": "killed", "controller": dead_controller()})
    ac.append_record(str(path), {"kind": "start", "run_id": "alive", "controller": ac.controller_identity()})
    ac.append_record(str(path), {"kind": "start", "run_id": "elsewhere", "controller": {"host": "other", "pid": 1}})
    write_runs(path, RUN_B, outcome="aborted by signal SIGTERM")
    report = ac.verify_file(str(path))
    assert report.ok
    aborted = {r.run_id: r.outcome for r in report.aborted()}
    assert aborted == {
        "killed": ac.ABORTED_NO_END,
        "elsewhere": ac.ABORTED_NO_END,
        RUN_B: "aborted by signal SIGTERM",
    }
    assert [r.run_id for r in report.in_progress()] == ["alive"]
    assert report.summary() == "ok: 7 records, 5 runs, 3 aborted, 1 in progress"


def test_current_run_is_in_progress(tmp_path):
    path = tmp_path / "audit.jsonl"
    ac.append_record(str(path), {"kind": "start", "run_id": "me", "controller": dead_controller()})
    assert ac.verify_file(str(path), current_run_id="me").summary() == "ok: 1 records, 1 runs, 0 aborted, 1 in progress"
    assert ac.verify_file(str(path)).summary() == "ok: 1 records, 1 runs, 1 aborted"


def test_reused_pid_with_another_start_time_is_not_alive():
    me = ac.controller_identity()
    assert ac.controller_alive(me)
    assert not ac.controller_alive({**me, "pid_start": me["pid_start"] + 1})
    assert not ac.controller_alive({**me, "host": "elsewhere"})


# -- probe: the file mid-run ---------------------------------------------------------------------


def test_probe_sees_a_removed_or_replaced_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A)
    identity = ac.file_identity(str(path))
    ac.probe(str(path), identity)
    path.rename(tmp_path / "moved.jsonl")
    with pytest.raises(ac.AuditWriteError, match="is gone"):
        ac.probe(str(path), identity)
    path.write_bytes(b"")
    with pytest.raises(ac.AuditWriteError, match="replaced"):
        ac.probe(str(path), identity)
    path.unlink()
    path.mkdir()
    with pytest.raises(ac.AuditWriteError, match="regular file"):
        ac.probe(str(path), None)
