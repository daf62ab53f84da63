"""Reading a run's JSON files (summary, release, configuration) with errors a user can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedcustomer.errors import ConfigError, DataError


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ConfigError if it is missing (``what`` says what it should be)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: {what}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} does not hold a JSON object")
    return data
