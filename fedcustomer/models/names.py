"""Task and architecture names, without torch: the CLI validates options before any model is built."""

from __future__ import annotations

TASKS = ("repayment", "clv")
ARCHITECTURES = {"repayment": ("mlp", "logreg"), "clv": ("mlp", "linear")}

# The CLV target's options and defaults (models/clv.py builds the target from them).
CLV_TRANSFORMS = ("log1p", "raw")
CLV_LOSSES = ("huber", "mse", "l1")
DEFAULT_CLV_TRANSFORM = "log1p"
DEFAULT_CLV_SPEND_CAP = 1000.0  # currency; a declared business bound, never read off the data
DEFAULT_CLV_LOSS = "huber"
DEFAULT_CLV_HUBER_DELTA = 0.3  # in target units ([0, 1])
