"""Coordinator side: ServerApp, strategy choice, round loop, checkpoints, run reports."""
