"""natrelay.tools."""
