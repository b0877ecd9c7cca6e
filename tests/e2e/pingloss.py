"""Ping at 5 packets a second through the tunnel and count what was lost, and when.

This module owns the measurement the hitless data plane is judged by: `ping -i 0.2 -D`
runs in the sender's namespace for as long as a scenario lasts; the replies' sequence
numbers say which packets were lost, and consecutive losses are gaps (their length is
the number of lost packets times the interval, plus one interval).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

import attrs

INTERVAL_S = 0.2
_REPLY = re.compile(r"^\[(?P<ts>[0-9.]+)\].*icmp_seq=(?P<seq>\d+) ")


@attrs.frozen
class PingResult:
    sent: int
    received: int
    #: Sequence numbers never answered (those still in flight at the end excepted).
    lost: tuple[int, ...]
    #: (first lost seq, lost in a row), longest first.
    gaps: tuple[tuple[int, int], ...]
    #: Unix time of the first packet.
    started_at: float

    @property
    def longest_gap_s(self) -> float:
        """Time without a reply across the longest run of losses."""
        return 0.0 if not self.gaps else (self.gaps[0][1] + 1) * INTERVAL_S

    def summary(self) -> str:
        gaps = ", ".join(f"{n * INTERVAL_S:.1f}s@{seq}" for seq, n in self.gaps[:8])
        pct = 100.0 * len(self.lost) / max(1, self.sent)
        return f"{self.sent} sent, {len(self.lost)} lost ({pct:.2f} %), gaps: {gaps or 'none'}"


def parse(output: str, sent: int, started_at: float) -> PingResult:
    """Replies in `ping -D -n` output -> what was lost among the first `sent` packets."""
    answered = {int(m["seq"]) for line in output.splitlines() if (m := _REPLY.match(line))}
    # The last second of packets may still be in flight when ping is stopped.
    last = max(answered, default=0)
    lost = tuple(s for s in range(1, min(sent, last) + 1) if s not in answered)
    runs: list[tuple[int, int]] = []
    for seq in lost:
        if runs and runs[-1][0] + runs[-1][1] == seq:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((seq, 1))
    gaps = tuple(sorted(runs, key=lambda r: (-r[1], r[0])))
    return PingResult(sent=last, received=len(answered), lost=lost, gaps=gaps, started_at=started_at)


@attrs.define
class PingRecorder:
    """`ping -i 0.2` from namespace `ns` to `target` until `stop()`."""

    ns: str
    target: str
    _proc: subprocess.Popen[str] | None = None
    _started: float = 0.0

    def start(self) -> PingRecorder:
        self._started = time.time()
        self._proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                "ping",
                "-n",
                "-D",
                "-i",
                str(INTERVAL_S),
                "-W",
                "1",
                self.target,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return self

    def stop(self) -> PingResult:
        assert self._proc is not None
        elapsed = time.time() - self._started
        self._proc.send_signal(signal.SIGINT)
        out, _ = self._proc.communicate(timeout=10)
        sent = int(elapsed / INTERVAL_S)
        return parse(out, sent, self._started)
