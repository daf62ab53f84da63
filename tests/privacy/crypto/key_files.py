"""What the crypto tests check on key files: their permission bits, and that a failed call wrote nothing."""

from __future__ import annotations

import stat
from pathlib import Path


def permission_bits(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes: to prove a failed call wrote nothing."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }
