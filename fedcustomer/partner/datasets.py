"""Dataset names and the holdout marker: how a job's source maps to the governed store's dataset.

The name says what a release was about (ledger rows, store tables); the partner's budget
covers all of them. ``holdout`` is the public column marking the partner's evaluation rows.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

# Public marker of the partner's evaluation split (1 = held out, never trained on).
HOLDOUT = "holdout"
SPLITS = ("train", "test")
# Without a holdout marker in its data, a partner holds out this share of customers,
# chosen by their pseudonym (stable, and decided by the partner alone).
DEFAULT_HOLDOUT_SHARE = 0.2
_HOLDOUT_CUT = int(DEFAULT_HOLDOUT_SHARE * 2**32)


def held_out_by_pseudonym(pseudonym: str) -> bool:
    """Whether a customer of a dataset without a holdout marker is in the evaluation split."""
    return int.from_bytes(hashlib.sha256(str(pseudonym).encode()).digest()[:4], "big") < _HOLDOUT_CUT


BUNDLED = {("synthetic", "repayment"): "bank", ("synthetic", "clv"): "retailer"}


def dataset_name(source: str, task: str) -> str:
    """The store (and ledger) dataset a job on ``source`` reads: budgets are per dataset."""
    if (source, task) in BUNDLED:
        return BUNDLED[(source, task)]
    stem = source if source in ("uci-credit", "cdnow") else Path(source).stem
    name = re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_") or "dataset"
    return name if name[0].isalpha() else "d_" + name
