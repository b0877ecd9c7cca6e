"""Two agents opening one new shared SQLite log at the same moment both get it."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from natrelay.eventlog import EventLog


def test_opening_a_log_whose_file_another_process_holds_locked_waits_instead_of_failing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # a new file, still in rollback-journal mode, locked
    released = threading.Timer(3.0, lambda: holder.execute("COMMIT"))
    released.start()
    started = time.monotonic()
    try:
        with EventLog.open(str(path)) as log:  # switches the file to WAL once it can
            assert log.last_seq() == 0
    finally:
        released.join()
        holder.close()
    assert time.monotonic() - started >= 2.5  # it waited past SQLite's own busy timeout
