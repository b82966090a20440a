"""Integration tests: fixtures are in tests/conftest.py (shared with adversity)."""
