"""Loading saved model state without running code from the file.

A pickle can execute anything when loaded, and checkpoints live in directories
(``RUN/checkpoints/``, a partner's ``state/``) that other users or a restored backup
may have written. Every checkpoint is therefore loaded weights-only: tensors, numbers,
strings, lists, tuples and dicts, nothing else. Writers store only those types.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from fedcustomer.errors import IntegrityError


def load_weights_only(path: Path | bytes, what: str) -> Any:
    """``torch.load`` restricted to plain data; IntegrityError (no traceback) for anything else.

    ``path`` may also be the saved bytes themselves (a result kept in a ledger row)."""
    source: Any = io.BytesIO(path) if isinstance(path, bytes) else Path(path)
    if isinstance(path, bytes):
        path = Path(f"<{len(path)} bytes>")
    try:
        return torch.load(source, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(
            f"{what} {path} is not a plain weights file and was not loaded (it may have been planted or "
            f"damaged; loading it could run code): {type(exc).__name__}. Remove it to start that step afresh"
        ) from None
