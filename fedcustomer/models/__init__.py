"""Repayment and CLV models, feature specs and metrics."""
