"""Fixtures of the catalog core tests: where the SIE catalog (bundles, models) lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def find_catalog_dir() -> Path | None:
    """``$SIE_CATALOG_DIR``, else ``shared/catalog`` beside the repo checkout."""
    env = os.environ.get("SIE_CATALOG_DIR")
    if env:
        return Path(env)
    # tests/catalog/conftest.py -> parents[2] is the repo root; shared/ sits beside it
    candidate = (Path(__file__).resolve().parents[2] / ".." / "shared" / "catalog").resolve()
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def catalog_dir() -> Path:
    path = find_catalog_dir()
    if path is None or not (path / "models").is_dir():
        pytest.skip(
            "SIE catalog not found: set SIE_CATALOG_DIR or check out shared/catalog "
            "(with models/ and bundles/) beside the repository"
        )
    return path


@pytest.fixture(scope="session")
def catalog_model_files(catalog_dir: Path) -> list[Path]:
    files = sorted((catalog_dir / "models").glob("*.yaml"))
    if not files:
        pytest.skip(f"no model YAMLs in {catalog_dir / 'models'}")
    return files
