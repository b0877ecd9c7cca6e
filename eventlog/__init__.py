"""natrelay.eventlog."""
