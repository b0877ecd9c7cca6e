"""Tests of natrelay.eventlog, on SQLite and PostgreSQL."""
