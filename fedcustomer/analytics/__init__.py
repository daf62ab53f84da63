"""Federated customer analytics released under differential privacy."""
