"""Bad rows in a stored log: one clear error naming the seq; `replay --check` lists them all.

Corruption is made with plain SQL on a copy of a finished log (natrelay itself
never updates a row): each kind of damage the issue names, end to end through
`EventLog.read_events`, `rebuild`, and the command line.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from natrelay.core.codec import DecodeError
from natrelay.eventlog import EventLog
from natrelay.eventlog.check import check_log
from natrelay.eventlog.replay import rebuild
from tests.reliability.conftest import copy_log, natrelay

#: seq -> (SQL making the damage, the words the error must contain).
DAMAGE: dict[int, tuple[str, str]] = {
    26: ("UPDATE events SET type = 'handshake_seen' WHERE seq = 26", "unknown event type 'handshake_seen'"),
    28: ("UPDATE events SET schema_version = 9 WHERE seq = 28", "schema version 9, newer than"),
    30: ("UPDATE events SET payload = x'7b226174223a' WHERE seq = 30", "not valid JSON"),
    34: (
        "UPDATE events SET payload = json_remove(payload, '$.relay') WHERE seq = 34",
        "incomplete: ",
    ),
    38: ("UPDATE events SET payload = json_set(payload, '$.relay', 7) WHERE seq = 38", "relay=7"),
}


def all_rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM events ORDER BY seq").fetchall()


def damaged(small_log: Path, tmp_path: Path, seqs: list[int]) -> Path:
    path = copy_log(small_log, tmp_path / "damaged.sqlite")
    with sqlite3.connect(path) as db:
        for seq in seqs:
            db.execute(DAMAGE[seq][0])
    return path


@pytest.mark.parametrize("seq", sorted(DAMAGE))
def test_each_bad_row_raises_one_error_naming_its_seq_and_problem(
    small_log: Path, tmp_path: Path, seq: int
) -> None:
    path = damaged(small_log, tmp_path, [seq])
    with EventLog.open(str(path), create=False) as log:
        with pytest.raises(DecodeError) as caught:
            list(log.read_events())
        assert caught.value.seq == seq
        assert str(caught.value).startswith(f"event seq {seq}: ")
        assert DAMAGE[seq][1] in str(caught.value)
        with pytest.raises(DecodeError, match=f"event seq {seq}: "):
            rebuild(log, "demo")
    result = natrelay("status", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"event seq {seq}: " in result.stderr
    assert "Traceback" not in result.stderr


def test_check_lists_every_bad_row_without_stopping_at_the_first(small_log: Path, tmp_path: Path) -> None:
    path = damaged(small_log, tmp_path, sorted(DAMAGE))
    before = all_rows(path)
    with EventLog.open(str(path), create=False) as log:
        result = check_log(log)
    assert not result.ok
    assert [p.seq for p in result.problems] == sorted(DAMAGE)
    for problem in result.problems:
        assert DAMAGE[problem.seq][1] in problem.problem
    cli = natrelay("replay", "--check", str(path))
    assert cli.returncode == 1
    for seq in DAMAGE:
        assert f"seq {seq} (" in cli.stdout
    assert f"{len(DAMAGE)} bad" in cli.stdout
    assert all_rows(path) == before, "checking must never rewrite the log"


def test_check_passes_on_an_honest_log(small_log: Path) -> None:
    result = natrelay("replay", "--check", str(small_log))
    assert result.returncode == 0, result.stderr
    assert ": ok" in result.stdout


def test_check_reports_seq_gaps_and_stream_version_repeats(small_log: Path, tmp_path: Path) -> None:
    path = copy_log(small_log, tmp_path / "gaps.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM events WHERE seq = 12")  # a lost row (not something natrelay does)
        db.execute("UPDATE events SET stream_version = stream_version + 500 WHERE seq = 40")
    with EventLog.open(str(path), create=False) as log:
        problems = [(p.seq, p.problem) for p in check_log(log).problems]
    assert (13, "seq gap: seqs 12-12 are missing") in problems
    assert (13, "stream version 2, expected 1 (a gap or a repeat)") in problems
    # The damaged version at seq 40 is reported there and at the next event of its stream.
    assert [seq for seq, _ in problems][:3] == [13, 13, 40]
    assert len(problems) == 4


def test_a_row_whose_event_time_disagrees_with_its_payload_is_reported(
    small_log: Path, tmp_path: Path
) -> None:
    path = copy_log(small_log, tmp_path / "time.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE events SET event_time = event_time + 1 WHERE seq = 7")
    with EventLog.open(str(path), create=False) as log:
        (problem,) = check_log(log).problems
    assert problem.seq == 7 and "event_time" in problem.problem


def test_hostile_text_in_a_bad_row_is_printed_without_escape_sequences(
    small_log: Path, tmp_path: Path
) -> None:
    path = copy_log(small_log, tmp_path / "hostile.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE events SET type = ? WHERE seq = 9", ("\x1b[2J\x1b]0;pwned\x07evil",))
    cli = natrelay("replay", "--check", str(path))
    assert cli.returncode == 1
    assert "\x1b" not in cli.stdout and "\x07" not in cli.stdout
    assert "\\x1b[2J" in cli.stdout


def test_the_payload_bytes_are_never_rewritten_on_read(small_log: Path, tmp_path: Path) -> None:
    path = copy_log(small_log, tmp_path / "read.sqlite")
    before = all_rows(path)
    with EventLog.open(str(path), create=False) as log:
        rebuild(log, "demo", use_snapshot=False)
        check_log(log)
    after = all_rows(path)
    assert after == before
    assert orjson.loads(after[0][-1])["policy"]
