"""A writer process for the gap race test: appends batches to a log as fast as it can.

Usage: python race_writer.py URL WRITER_ID BATCHES BATCH_SIZE
"""

from __future__ import annotations

import sys

from natrelay.core import events as E
from natrelay.eventlog import EventLog


def main() -> None:
    url, writer, batches, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with EventLog.open(url, create=False) as log:
        for b in range(batches):
            log.append([(f"writer/{writer}", E.Tick(at=b * size + i)) for i in range(size)])


if __name__ == "__main__":
    main()
