"""Where the SIE catalog (real bundle and model files used as test data) lives."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def find_catalog_dir() -> Path | None:
    """``$SIE_CATALOG_DIR``, else ``shared/catalog`` beside the repository checkout."""
    env = os.environ.get("SIE_CATALOG_DIR")
    if env:
        return Path(env)
    candidate = (REPO / ".." / "shared" / "catalog").resolve()
    return candidate if candidate.is_dir() else None
