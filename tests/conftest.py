"""Fixtures shared by the unit and API-level tests: the SIE catalog used as test data."""

from __future__ import annotations

from pathlib import Path

import pytest

from sie_operator.devcluster.catalogdir import find_catalog_dir

NO_CATALOG = (
    "SIE catalog not found: set SIE_CATALOG_DIR or check out shared/catalog "
    "(with models/ and bundles/) beside the repository"
)


@pytest.fixture(scope="session")
def catalog_dir() -> Path:
    path = find_catalog_dir()
    if path is None or not (path / "models").is_dir():
        pytest.skip(NO_CATALOG)
    return path


@pytest.fixture(scope="session")
def catalog_model_files(catalog_dir: Path) -> list[Path]:
    files = sorted((catalog_dir / "models").glob("*.yaml"))
    if not files:
        pytest.skip(f"no model YAMLs in {catalog_dir / 'models'}")
    return files
