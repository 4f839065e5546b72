"""The audit file: canonical sealed records, appended under a lock, and the first broken record named."""

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
from ansible.module_utils.audit_file import FileSink, read_lines

RUN_A = "run-a"
RUN_B = "run-b"
KEY = ac.AuditKey(b"unit-test-key-0123456789abcdef")
OTHER_KEY = ac.AuditKey(b"another-key-0123456789abcdef!!")


def append(path, body, key=KEY, group=None, lock_timeout=5.0) -> dict:
    sealed = {}

    def build(prev, prev_seq):
        record, line = ac.seal(body, prev, prev_seq, key)
        sealed.update(record)
        return line

    FileSink(str(path), group, lock_timeout).append(build)
    return sealed


def write_runs(path, *runs, outcome="succeeded", key=KEY):
    """Append start+end records for each run id, one after the other."""
    for run_id in runs:
        append(path, {"kind": "start", "run_id": run_id, "playbook": "rollback.yml"}, key)
        append(path, {"kind": "end", "run_id": run_id, "playbook": "rollback.yml", "outcome": outcome}, key)


def verify(path, key=KEY, current=None) -> ac.Report:
    return ac.verify_lines(read_lines(str(path)), key, current)


def lines_of(path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def store(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_records_are_canonical_chained_and_sealed(tmp_path):
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
        unsealed = {k: v for k, v in record.items() if k not in ("sha256", "seal")}
        assert record["sha256"] == ac.sha256_hex(ac.canonical(unsealed))
        assert record["key_id"] == KEY.key_id
        assert KEY.valid(ac.canonical({k: v for k, v in record.items() if k != "seal"}), record["seal"])
    report = verify(path)
    assert report.ok and report.summary() == "ok: 4 records, 2 runs, 0 aborted"
    assert report.head_sha256 == ac.sha256_hex(lines[-1]) and report.head_seq == 4 and report.sealed == 4


def test_the_key_never_shows_and_a_short_key_is_one_sentence():
    assert "unit-test-key" not in repr(KEY) and "unit-test-key" not in KEY.key_id
    assert ac.AuditKey.from_env({}) is None and ac.AuditKey.from_env({ac.KEY_ENV: ""}) is None
    with pytest.raises(ac.AuditKeyError, match="too short to seal the audit \\(5 bytes\\): use at least 16"):
        ac.AuditKey.from_env({ac.KEY_ENV: "short"})
    assert ac.AuditKey.from_env({ac.KEY_ENV: KEY.secret.decode()}).key_id == KEY.key_id


def test_file_is_created_0600_in_a_0700_directory(tmp_path):
    path = tmp_path / "new" / "deeper" / "audit.jsonl"
    append(path, {"kind": "start", "run_id": RUN_A})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_audit_group_gets_0640_and_0750(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "new" / "audit.jsonl"
    append(path, {"kind": "start", "run_id": RUN_A}, group=group)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert path.stat().st_gid == os.getgid()


def test_unknown_group_is_one_sentence(tmp_path):
    with pytest.raises(ac.AuditWriteError, match="audit group 'no-such-group-xyz' does not exist"):
        append(tmp_path / "a.jsonl", {"kind": "start", "run_id": RUN_A}, group="no-such-group-xyz")
    assert not (tmp_path / "a.jsonl").exists()


def test_existing_file_is_only_appended(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A)
    before = path.read_bytes()
    write_runs(path, RUN_B)
    assert path.read_bytes().startswith(before)


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_a_file_others_can_write_is_refused(tmp_path, mode):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A)
    path.chmod(mode)
    before = path.read_bytes()
    with pytest.raises(ac.AuditWriteError, match=f"can be written by others \\(mode {mode:04o}\\).*chmod 600"):
        append(path, {"kind": "start", "run_id": RUN_B})
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == mode
    with pytest.raises(ac.AuditError, match="can be written by others"):
        read_lines(str(path))


def test_a_symbolic_link_is_refused_never_followed(tmp_path):
    target = tmp_path / "elsewhere.jsonl"
    write_runs(target, RUN_A)
    before = target.read_bytes()
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    with pytest.raises(ac.AuditWriteError, match="is a symbolic link"):
        append(link, {"kind": "start", "run_id": RUN_B})
    assert target.read_bytes() == before
    with pytest.raises(ac.AuditError, match="is a symbolic link"):
        read_lines(str(link))


def test_a_file_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A)
    os.chown(path, 65534, -1)
    with pytest.raises(ac.AuditWriteError, match="belongs to uid 65534, not to this user"):
        append(path, {"kind": "start", "run_id": RUN_B})


def test_a_directory_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ac.AuditWriteError, match="writable by others, who could replace the file"):
        append(shared / "audit.jsonl", {"kind": "start", "run_id": RUN_A})


def test_unwritable_path_raises_a_typed_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ac.AuditWriteError, match="cannot create"):
        append(blocker / "audit.jsonl", {"kind": "start", "run_id": RUN_A})
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(ac.AuditWriteError):
        append(tmp_path / "dir.jsonl", {"kind": "start", "run_id": RUN_A})


def test_lock_held_elsewhere_times_out(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A)
    with open(path, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(ac.AuditWriteError, match="another process held it"):
            append(path, {"kind": "start", "run_id": RUN_B}, lock_timeout=0.2)
    assert verify(path).records == 2


def _append_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        append(path, {"kind": "start", "run_id": f"w{worker}-{i}"})
        append(path, {"kind": "end", "run_id": f"w{worker}-{i}", "outcome": "succeeded"})


def test_concurrent_processes_keep_the_chain_valid(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(path, w, 15)) for w in range(4)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(120)
        assert proc.exitcode == 0
    report = verify(tmp_path / "audit.jsonl")
    assert report.summary() == "ok: 120 records, 60 runs, 0 aborted"


# -- the first broken record -----------------------------------------------------------------


@pytest.fixture
def chain_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A, RUN_B, "run-c")
    return path


def broken(path, key=KEY):
    report = verify(path, key)
    assert not report.ok
    return report.broken


def rewrite(line: bytes, **changes) -> bytes:
    """What someone without the key can do: change a record and recompute its sha256."""
    record = {**json.loads(line), **changes}
    record["sha256"] = ac.record_sha256(record)
    return ac.canonical(record)


def test_edited_value(chain_file):
    lines = lines_of(chain_file)
    lines[3] = lines[3].replace(b'"succeeded"', b'"failed at schema"')
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.run_id, b.reason) == (4, RUN_B, "edited")
    assert "sha256 does not match" in b.detail


def test_rewritten_and_rehashed_is_resealed_without_the_key(chain_file):
    lines = lines_of(chain_file)
    lines[1] = rewrite(lines[1], outcome="aborted by signal SIGTERM")
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.run_id, b.reason) == (2, RUN_A, ac.RESEALED)
    assert "rewritten by someone without the key" in b.detail


def test_every_record_rewritten_and_the_chain_recomputed_is_caught_at_the_first(chain_file):
    """The review's attack: operator rewritten in every record and the documented sha256 chain recomputed."""
    prev = None
    out = []
    for seq, line in enumerate(lines_of(chain_file), start=1):
        record = {**json.loads(line), "operator": "mallory", "seq": seq}
        record["prev_sha256"] = ac.ZERO_SHA256 if prev is None else ac.sha256_hex(prev)
        record["sha256"] = ac.record_sha256(record)
        prev = ac.canonical(record)
        out.append(prev)
    store(chain_file, out)
    assert verify(chain_file, key=None).ok  # the chain alone is fooled...
    b = broken(chain_file)  # ... the seal is not
    assert (b.line, b.reason) == (1, ac.RESEALED)


def test_seal_stripped_or_from_another_key(chain_file):
    lines = lines_of(chain_file)
    record = json.loads(lines[2])
    del record["seal"], record["key_id"]
    record["sha256"] = ac.record_sha256(record)
    lines[2] = ac.canonical(record)
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.reason) == (3, ac.RESEALED) and "carries no seal" in b.detail
    b = broken(chain_file, key=OTHER_KEY)
    assert (b.line, b.reason) == (1, ac.RESEALED) and "is not the verifying key's" in b.detail


def test_reformatted_line_is_an_edit(chain_file):
    lines = lines_of(chain_file)
    lines[0] = json.dumps(json.loads(lines[0]), indent=None).encode()
    store(chain_file, lines)
    assert (broken(chain_file).line, broken(chain_file).reason) == (1, "edited")


def test_record_missing_in_the_middle(chain_file):
    lines = lines_of(chain_file)
    del lines[2]
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.run_id, b.reason) == (3, RUN_B, "missing in the middle")
    assert "1 record(s)" in b.detail
    assert verify(chain_file).summary().startswith(f"broken at line 3 (run {RUN_B}): missing in the middle: ")


def test_records_missing_at_the_start(chain_file):
    store(chain_file, lines_of(chain_file)[2:])
    b = broken(chain_file)
    assert (b.line, b.reason) == (1, "missing at the start")


def test_swapped_records(chain_file):
    lines = lines_of(chain_file)
    lines[2], lines[3] = lines[3], lines[2]
    store(chain_file, lines)
    assert (broken(chain_file).line, broken(chain_file).reason) == (3, "reordered")


def test_record_moved_to_the_end(chain_file):
    lines = lines_of(chain_file)
    lines.append(lines.pop(1))
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.reason) == (2, "reordered")


def test_not_json_line(chain_file):
    lines = lines_of(chain_file)
    lines.insert(2, b"hello auditor")
    store(chain_file, lines)
    b = broken(chain_file)
    assert (b.line, b.run_id, b.reason) == (3, None, "not JSON")


def test_torn_last_line_is_kept_and_reported(chain_file):
    with open(chain_file, "ab") as handle:
        handle.write(b'{"kind":"start","run_')  # a write cut short by a crash
    append(chain_file, {"kind": "start", "run_id": "run-d"})
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
    assert (b.line, b.reason) == (1, "edited") and "seq" in b.detail


def test_missing_file_is_one_sentence(tmp_path):
    with pytest.raises(ac.AuditError, match="does not exist"):
        read_lines(str(tmp_path / "nope.jsonl"))


def test_empty_file_is_an_intact_empty_chain(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"")
    (tmp_path / "a.jsonl").chmod(0o600)
    assert verify(tmp_path / "a.jsonl").summary() == "ok: 0 records, 0 runs, 0 aborted"


# -- runs without an end record ----------------------------------------------------------------


def dead_controller() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return {"host": ac.controller_identity()["host"], "pid": proc.pid, "pid_start": 1}


def test_start_without_end_is_aborted_unless_its_controller_lives(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_runs(path, RUN_A)
    append(path, {"kind": "start", "run_id": "killed", "controller": dead_controller()})
    append(path, {"kind": "start", "run_id": "alive", "controller": ac.controller_identity()})
    append(path, {"kind": "start", "run_id": "elsewhere", "controller": {"host": "other", "pid": 1}})
    write_runs(path, RUN_B, outcome="aborted by signal SIGTERM")
    report = verify(path)
    assert report.ok
    aborted = {r.run_id: r.outcome for r in report.aborted()}
    assert aborted == {"killed": ac.ABORTED_NO_END, "elsewhere": ac.ABORTED_NO_END, RUN_B: "aborted by signal SIGTERM"}
    assert [r.run_id for r in report.in_progress()] == ["alive"]
    assert report.summary() == "ok: 7 records, 5 runs, 3 aborted, 1 in progress"


def test_current_run_is_in_progress(tmp_path):
    path = tmp_path / "audit.jsonl"
    append(path, {"kind": "start", "run_id": "me", "controller": dead_controller()})
    assert verify(path, current="me").summary() == "ok: 1 records, 1 runs, 0 aborted, 1 in progress"
    assert verify(path).summary() == "ok: 1 records, 1 runs, 1 aborted"


def test_reused_pid_with_another_start_time_is_not_alive():
    me = ac.controller_identity()
    assert ac.controller_alive(me)
    assert not ac.controller_alive({**me, "pid_start": me["pid_start"] + 1})
    assert not ac.controller_alive({**me, "host": "elsewhere"})


# -- probe: the file mid-run ---------------------------------------------------------------------


def test_probe_sees_a_removed_replaced_or_opened_up_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = FileSink(str(path))
    sink.append(lambda prev, seq: ac.seal({"kind": "start", "run_id": RUN_A}, prev, seq, KEY)[1])
    sink.probe()
    path.chmod(0o666)
    with pytest.raises(ac.AuditWriteError, match="can be written by others"):
        sink.probe()
    path.rename(tmp_path / "moved.jsonl")
    with pytest.raises(ac.AuditWriteError, match="is gone"):
        sink.probe()
    path.write_bytes(b"")
    path.chmod(0o600)
    with pytest.raises(ac.AuditWriteError, match="replaced"):
        sink.probe()
    path.unlink()
    path.mkdir()
    with pytest.raises(ac.AuditWriteError, match="regular file"):
        sink.probe()
