"""The real mesh node: WireGuard, TURN relays, rendezvous, the agent configuration
and the intake of outside input."""
