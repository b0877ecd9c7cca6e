"""The gap rule under racing writers: a tailing reader never skips an event.

Writers (threads, and separate processes) append concurrently while a reader
repeatedly asks for "everything after the last seq I saw". If a row could
become visible before a row with a smaller seq, the reader would move past the
smaller seq and never see it; the reader checks every seq it sees is exactly
the previous one plus one, and at the end that it saw every event once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from natrelay.core import events as E
from natrelay.eventlog import EventLog


def _tail_until(log: EventLog, total: int, done: threading.Event) -> list[int]:
    seen: list[int] = []
    last = 0
    while True:
        finished = done.is_set()
        for stored in log.read(last + 1):
            assert stored.seq == last + 1, f"reader skipped from seq {last} to {stored.seq}"
            last = stored.seq
            seen.append(last)
        if finished:
            return seen
        assert len(seen) <= total


def _check_streams(log: EventLog, writers: int, per_writer: int) -> None:
    versions = log.stream_versions([f"writer/{w}" for w in range(writers)])
    assert set(versions.values()) == {per_writer}
    for w in range(writers):
        stored = list(log.read(streams=[f"writer/{w}"]))
        assert [s.stream_version for s in stored] == list(range(1, per_writer + 1))
        assert [s.decode().at for s in stored] == list(range(per_writer))


def test_threads_racing_writers_never_make_a_tailing_reader_skip(
    open_log: Callable[..., EventLog],
) -> None:
    log = open_log()
    writers, batches, size = 6, 40, 5
    done = threading.Event()

    def write(writer: int) -> None:
        for b in range(batches):
            log.append([(f"writer/{writer}", E.Tick(at=b * size + i)) for i in range(size)])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    result: list[list[int]] = []
    reader = threading.Thread(target=lambda: result.append(_tail_until(log, 10**9, done)))
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()
    total = writers * batches * size
    assert result[0] == list(range(1, total + 1))
    _check_streams(log, writers, batches * size)


def test_processes_racing_writers_never_make_a_tailing_reader_skip(
    open_log: Callable[..., EventLog], new_url: Callable[[], str]
) -> None:
    url = new_url()
    log = open_log(url)
    writers, batches, size = 4, 60, 3
    script = Path(__file__).with_name("race_writer.py")
    done = threading.Event()
    result: list[list[int]] = []
    reader = threading.Thread(target=lambda: result.append(_tail_until(log, 10**9, done)))
    reader.start()
    procs = [
        subprocess.Popen([sys.executable, str(script), url, str(w), str(batches), str(size)])
        for w in range(writers)
    ]
    codes = [proc.wait(timeout=300) for proc in procs]
    done.set()
    reader.join()
    assert codes == [0] * writers
    total = writers * batches * size
    assert result[0] == list(range(1, total + 1))
    _check_streams(log, writers, batches * size)


def test_follow_sees_every_event_of_racing_writers(open_log: Callable[..., EventLog]) -> None:
    log = open_log()
    writers, batches = 4, 50
    total = writers * batches
    seen: list[int] = []
    stop = threading.Event()

    def follow() -> None:
        for stored in log.follow(poll_interval=0.02, stop=stop):
            seen.append(stored.seq)
            if len(seen) == total:
                stop.set()

    follower = threading.Thread(target=follow)
    follower.start()
    threads = [
        threading.Thread(target=lambda w=w: [log.append([(f"w/{w}", E.Tick(at=b))]) for b in range(batches)])
        for w in range(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    follower.join(timeout=60)
    stop.set()
    assert seen == list(range(1, total + 1))
