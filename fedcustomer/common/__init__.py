"""Small foundations every layer may use: whole-file writes and SQLite transactions."""
