"""natrelay.core."""
