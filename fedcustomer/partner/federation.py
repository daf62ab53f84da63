"""The index of a simulated federation: which partner homes, in partition order.

The coordinator writes ``federation.json`` beside the homes it set up; a simulated node
finds its home by partition id through it, and analytics over a folder of homes reads
the same order. One format, written and read here only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fedcustomer.common.files import atomic_write_text
from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome

FEDERATION_INDEX = "federation.json"


def write_index(root: Path, homes: Sequence[PartnerHome]) -> Path:
    """Record the homes under ``root`` in partition order."""
    index = Path(root) / FEDERATION_INDEX
    atomic_write_text(index, json.dumps({"partners": [h.root.name for h in homes]}, indent=2) + "\n")
    return index


def read_index(root: Path) -> list[PartnerHome] | None:
    """The homes recorded under ``root``, or None when there is no index."""
    index = Path(root) / FEDERATION_INDEX
    if not index.exists():
        return None
    try:
        names = json.loads(index.read_text(encoding="utf-8"))["partners"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{index}: not a federation index ({exc})") from None
    return [PartnerHome(Path(root) / str(n)) for n in names]
