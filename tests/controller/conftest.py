"""Fixtures of the Kubernetes-side tests: the SIE catalog and the installed ModelConfig CRD."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sie_operator.devcluster.catalogdir import find_catalog_dir
from sie_operator.devcluster.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "modelconfig.yaml"
CRD_NAME = "modelconfigs.sie.dev"


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
def modelconfig_crd(control_plane: ControlPlane) -> Iterator[str]:
    """The committed CRD installed (server-side apply, idempotent) and Established."""
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=sie-tests", "-f", str(CRD_FILE)
    )
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    yield CRD_NAME
