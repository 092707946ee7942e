"""Fixtures of the Kubernetes-side tests: the SIE catalog and the installed ModelConfig CRD."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sie_operator.devcluster.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "modelconfig.yaml"
CRD_NAME = "modelconfigs.sie.dev"


def find_catalog_dir() -> Path | None:
    """``$SIE_CATALOG_DIR``, else ``shared/catalog`` beside the repo checkout."""
    env = os.environ.get("SIE_CATALOG_DIR")
    if env:
        return Path(env)
    candidate = (REPO / ".." / "shared" / "catalog").resolve()
    return candidate if candidate.is_dir() else None


def catalog_model_paths() -> list[Path]:
    """Model YAMLs of the catalog, for parametrising at collection time ([] if absent)."""
    root = find_catalog_dir()
    return sorted((root / "models").glob("*.yaml")) if root is not None else []


def _skip_no_catalog() -> None:
    pytest.skip(
        "SIE catalog not found: set SIE_CATALOG_DIR or check out shared/catalog "
        "(with models/) beside the repository"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``catalog_model_file``: one test per catalog model (a single skipped one if absent)."""
    if "catalog_model_file" in metafunc.fixturenames:
        paths = catalog_model_paths()
        metafunc.parametrize(
            "catalog_model_file",
            paths or [None],
            ids=[p.stem for p in paths] or ["no-catalog"],
            indirect=True,
        )


@pytest.fixture
def catalog_model_file(request: pytest.FixtureRequest) -> Path:
    if request.param is None:
        _skip_no_catalog()
    path: Path = request.param
    return path


@pytest.fixture(scope="session")
def catalog_dir() -> Path:
    path = find_catalog_dir()
    if path is None or not (path / "models").is_dir():
        _skip_no_catalog()
    assert path is not None
    return path


@pytest.fixture(scope="session")
def catalog_model_files(catalog_dir: Path) -> list[Path]:
    files = sorted((catalog_dir / "models").glob("*.yaml"))
    if not files:
        pytest.skip(f"no model YAMLs in {catalog_dir / 'models'}")
    return files


@pytest.fixture(scope="session")
def modelconfig_crd(control_plane: ControlPlane) -> Iterator[str]:
    """The committed CRD installed (server-side apply, idempotent) and Established."""
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=sie-tests", "-f", str(CRD_FILE)
    )
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    yield CRD_NAME
