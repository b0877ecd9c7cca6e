"""natrelay.adapters."""
