"""Tests use the package's in-process grid (kept importable from here for older tests)."""

from fedcustomer.server.inprocess import LocalGrid

__all__ = ["LocalGrid"]
