"""Helpers shared by the config service tests (a uniquely named module: ``conftest`` is
ambiguous when several test directories are collected together)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from sie_operator.catalog import yamlio
from sie_operator.configsvc.service import ConfigService
from sie_operator.configsvc.settings import Settings
from sie_operator.store import DirectoryStore, FileStore

BERT = "sie_server.adapters.bert_flash:BertFlashAdapter"
BERT_MODULE = "sie_server.adapters.bert_flash"
SGLANG = "sie_server.adapters.sglang:SGLangAdapter"
ADMIN = "admin-secret"
INFER = "infer-secret"


def model_yaml(model_id: str = "acme/bert", profiles: dict[str, Any] | None = None, **top: Any) -> str:
    """A model body in SIE's YAML (block style)."""
    doc: dict[str, Any] = {"sie_id": model_id, **top}
    doc["profiles"] = profiles or {"default": {"adapter_path": BERT, "max_batch_tokens": 8192}}
    return yamlio.dump(doc)


def write_layout(root: Path) -> tuple[Path, Path]:
    """The contract's fixture: bundles `default` (10) and `sglang` (20); model `test/model`."""
    bundles = root / "bundles"
    models = root / "models"
    bundles.mkdir(parents=True)
    models.mkdir(parents=True)
    (bundles / "default.yaml").write_text(
        f"name: default\npriority: 10\ndefault: true\nadapters:\n- {BERT_MODULE}\n"
    )
    (bundles / "sglang.yaml").write_text(
        "name: sglang\npriority: 20\nadapters:\n- sie_server.adapters.sglang\n"
    )
    (models / "test__model.yaml").write_text(
        "# baseline model, served verbatim\nsie_id: test/model\nprofiles:\n  default:\n"
        f"    adapter_path: {BERT}\n    max_batch_tokens: 8192\n"
    )
    return bundles, models


@dataclass
class Api:
    client: TestClient[Any, Any]
    service: ConfigService
    settings: Settings

    @property
    def store_dir(self) -> Path:
        assert self.settings.store_dir is not None
        return self.settings.store_dir

    async def post(self, body: str | bytes, *, token: str | None = None, key: str | None = None) -> Any:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.client.post("/v1/configs/models", data=body, headers=headers)


MakeApi = Callable[..., Awaitable[Api]]


def file_store(service: ConfigService) -> FileStore:
    """The blocking FileStore under a directory-backed service (to inject faults into)."""
    assert isinstance(service.store, DirectoryStore)
    return service.store.file
