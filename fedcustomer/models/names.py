"""Task and architecture names, without torch: the CLI validates options before any model is built."""

from __future__ import annotations

TASKS = ("repayment", "clv")
ARCHITECTURES = {"repayment": ("mlp", "logreg"), "clv": ("mlp", "linear")}
