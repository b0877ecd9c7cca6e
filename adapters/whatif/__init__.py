"""Counterfactual replay: a recorded mesh as a trace-driven world, and another policy run against it.

`trace` reads one node's view of a log into a `Trace` (what happened outside
the engine, and what every command the engine gave came to); `trace_world`
turns a trace into a `NetworkAdapter` that answers commands from that
evidence (and from a stated model where the log has none); `counterfactual`
runs an engine with any policy against it; `figures` measures a run per peer.
Nothing here depends on the simulator or on the real agent: a log from either
is a trace.
"""
