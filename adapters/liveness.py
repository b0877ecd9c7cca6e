"""When the agent notices a dead path: its two silence rules as numbers and timings, in one place.

The real agent (`adapters.mesh`) and the simulator (`adapters.sim`) must not
import each other, yet the simulator has to emit `PathSilent` exactly when the
agent would, or its tables describe another product. So the rules live here,
one level up, and both read them:

- the data plane's heartbeat (`shared_plane.SharedPlane.check_liveness`, and
  `path_proxy`'s, same numbers): while a direct path carries traffic, WireGuard's
  counters are sampled every `SAMPLE_EVERY_S`; a sample whose receive counter moved
  marks the path alive; nothing received for `HEARTBEAT_AFTER_S` sends pings every
  `HEARTBEAT_EVERY_S` (a pong counts as received); `DEAD_AFTER_S` of silence
  reports the path dead (`data_plane._dead`: `PathSilent`, direct paths only);
- a probe (`SharedPlane.probe`) pings every `PROBE_EVERY_S` until answered or its
  time is up;
- the agent's counter watch (`observe.Agent._watch_silence`), every path: the
  receive counters are read every `silence_check_ms`; a counter that stood still
  for `silence_limit_ms` (3 keepalives + 1 s) while the peer has been connected at
  least as long reports `PathSilent`.
"""

from __future__ import annotations

#: The agent's default persistent keepalive (s): `agent_config.AgentConfig.persistent_keepalive`.
DEFAULT_KEEPALIVE_S = 1
#: Heartbeat: counters sampled this often while a direct peer carries traffic (s).
SAMPLE_EVERY_S = 0.1
#: Heartbeat: pings start after this much silence (s)...
HEARTBEAT_AFTER_S = 0.8
#: ...one every this often (s)...
HEARTBEAT_EVERY_S = 0.4
#: ...and this much silence reports the direct path dead (s).
DEAD_AFTER_S = 2.5
#: A peer is active (heartbeat on) while it sent data within this window (s).
ACTIVE_WINDOW_S = 5.0
#: A direct probe pings its endpoint this often until answered or its time is up (s):
#: one lost ping costs this much, not the probe (`SharedPlane.probe`).
PROBE_EVERY_S = 0.2


def silence_limit_ms(keepalive_s: int = DEFAULT_KEEPALIVE_S) -> int:
    """Counter watch: nothing received for three keepalive intervals (plus slack) is a dead path."""
    return 3 * keepalive_s * 1000 + 1000


def silence_check_ms(keepalive_s: int = DEFAULT_KEEPALIVE_S) -> int:
    """Counter watch: how often connected peers' receive counters are read (a quarter of the limit)."""
    return max(250, silence_limit_ms(keepalive_s) // 4)


def _next_tick(at_ms: int, every_ms: int) -> int:
    """The first reading at or after `at_ms` of a clock that reads every `every_ms` from 0."""
    return -(-at_ms // every_ms) * every_ms


def counter_silence_at_ms(
    died_at_ms: int, since_ms: int, keepalive_s: int = DEFAULT_KEEPALIVE_S
) -> tuple[int, int]:
    """When the counter watch reports a path that stopped delivering at `died_at_ms`, and its silence.

    The last packet arrived at `died_at_ms` (traffic flows); the first reading after it
    saw the counter's last value; the report comes at the first reading at least
    `silence_limit_ms` later, and no sooner than that long after the peer connected
    (`since_ms`, the agent's `record.since` guard).
    """
    every, limit = silence_check_ms(keepalive_s), silence_limit_ms(keepalive_s)
    seen = _next_tick(died_at_ms, every)
    at = max(seen + limit, _next_tick(since_ms + limit, every))
    return at, at - seen


def heartbeat_dead_at_ms(died_at_ms: int, since_ms: int) -> tuple[int, int]:
    """When the heartbeat reports a direct path (with traffic) that stopped delivering at `died_at_ms`,
    and the silence it reports.

    The sample after the last packet saw the receive counter move; `DEAD_AFTER_S`
    later, at a sample, the path is reported dead. A path selected at `since_ms` counts
    as heard from then (`use_direct` starts the silence clock when it selects it).
    """
    every = round(SAMPLE_EVERY_S * 1000)
    heard = max(_next_tick(died_at_ms, every), since_ms)
    at = _next_tick(heard + round(DEAD_AFTER_S * 1000), every)
    return at, at - heard
