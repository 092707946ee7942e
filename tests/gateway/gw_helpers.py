"""Shared helpers of the gateway tests (imported by module name; no package needed)."""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from sie_operator.catalog.bundles import Bundle, BundleSet, shipped_bundles
from sie_operator.catalog.registry import Registry
from sie_operator.protocol.configclient import ConfigServiceError, EpochInfo

ST = "sie_server.adapters.sentence_transformer:SentenceTransformerAdapter"
SGLANG = "sie_server.adapters.sglang:SGLangAdapter"
_counter = itertools.count()


def model_doc(model_id: str, *profiles: str, adapter: str = ST, mbt: int = 1024) -> dict[str, Any]:
    """A small valid SIE model document with the given profile names (default: 'default')."""
    names = profiles or ("default",)
    return {
        "sie_id": model_id,
        "hf_id": model_id,
        "tasks": {"encode": {"dense": {"dim": 8}}},
        "profiles": {p: {"adapter_path": adapter, "max_batch_tokens": mbt} for p in names},
    }


def unique_model(prefix: str = "test/m") -> str:
    return f"{prefix}{next(_counter)}"


class FakeService:
    """The config service's side, in memory, built on the same catalog Registry.

    Used only by unit tests of the mirror's decisions; integration tests run the real
    ``sie-operator config-api``.
    """

    base_url = "fake://config"

    def __init__(self, bundles: BundleSet | None = None, producer: str = "sie-config-test") -> None:
        self.bundles = bundles or shipped_bundles()
        self.registry = Registry(self.bundles)
        self.epoch = 0
        self.producer = producer
        self.fail = False
        self.calls: list[str] = []

    def write(self, doc: dict[str, Any]) -> list[tuple[str, bytes]]:
        """Apply a write; returns the NATS messages as (subject, payload), bundle then _all."""
        plan = self.registry.plan(doc)
        entry = self.registry.apply(plan, epoch=self.epoch + 1)
        self.epoch += 1
        out = []
        for b in plan.bundles:
            payload = orjson.dumps(
                {
                    "router_id": self.producer,
                    "bundle_id": b,
                    "epoch": self.epoch,
                    "bundle_config_hash": self.registry.bundle_hash(b),
                    "model_id": plan.model_id,
                    "profiles_added": plan.created,
                    "model_config": entry.yaml_text,
                    "affected_bundles": list(plan.bundles),
                }
            )
            out.append((f"sie.config.models.{b}", payload))
            out.append(("sie.config.models._all", payload))
        return out

    # -- the ConfigServiceClient interface ---------------------------------------------------
    def _check(self, what: str) -> None:
        self.calls.append(what)
        if self.fail:
            raise ConfigServiceError(f"GET {what}: unreachable (test)")

    async def epoch_info(self) -> EpochInfo:
        self._check("/epoch")
        return EpochInfo(self.epoch, self.bundles.hash)

    async def bundle_ids(self) -> list[str]:
        self._check("/bundles")
        return self.bundles.names()

    async def bundle(self, bundle_id: str) -> Bundle:
        self._check(f"/bundles/{bundle_id}")
        b = self.bundles.get(bundle_id)
        if b is None:
            raise ConfigServiceError(f"GET /bundles/{bundle_id}: HTTP 404")
        return b

    async def export(self) -> bytes:
        self._check("/export")
        return orjson.dumps(
            {
                "snapshot_version": 1,
                "epoch": self.epoch,
                "generated_at": "2026-01-01T00:00:00+00:00",
                "models": [
                    {
                        "model_id": e.model_id,
                        "model_config": e.doc,
                        "raw_yaml": e.yaml_text,
                        "affected_bundles": list(e.bundles),
                    }
                    for e in self.registry
                ],
            }
        )


def fake_client(service: FakeService) -> Any:
    """Adapt FakeService to the client interface (``epoch`` is both a counter and a method)."""

    class _Client:
        base_url = service.base_url

        async def epoch(self) -> EpochInfo:
            return await service.epoch_info()

        bundle_ids = service.bundle_ids
        bundle = service.bundle
        export = service.export

    return _Client()
