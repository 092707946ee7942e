"""Every model YAML of the SIE catalog is accepted, routed and exported losslessly."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from sie_operator.catalog import yamlio
from sie_operator.catalog.bundles import BundleSet, load_bundle_dir, shipped_bundles
from sie_operator.catalog.ids import filename_to_id, id_to_filename
from sie_operator.catalog.registry import Registry
from sie_operator.catalog.schema import ModelConfig


def _load(files: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    return [(f, yamlio.load(f.read_bytes())) for f in files]


def _bundles(catalog_dir: Path) -> BundleSet:
    d = catalog_dir / "bundles"
    return load_bundle_dir(d) if d.is_dir() else shipped_bundles()


def test_every_catalog_model_is_accepted_routed_and_exported(catalog_model_files: list[Path]) -> None:
    reg = Registry(shipped_bundles())
    failures: list[str] = []
    for f, doc in _load(catalog_model_files):
        original = json.loads(json.dumps(doc))  # independent copy
        try:
            cfg = ModelConfig.model_validate(doc)
            plan = reg.plan(doc, source="filesystem")
        except Exception as exc:
            failures.append(f"{f.name}: {type(exc).__name__}: {exc}")
            continue
        if not plan.bundles:
            failures.append(f"{f.name}: routes to no bundle")
        if plan.created != list(doc["profiles"]) or plan.skipped:
            failures.append(f"{f.name}: created {plan.created}, skipped {plan.skipped}")
        if id_to_filename(cfg.model_id) + ".yaml" != f.name or filename_to_id(f.stem) != cfg.model_id:
            failures.append(f"{f.name}: file name does not match sie_id {cfg.model_id!r}")
        entry = reg.apply(plan, epoch=0)
        exported = yamlio.load(entry.yaml_text)
        if exported != original or list(exported["profiles"]) != list(original["profiles"]):
            failures.append(f"{f.name}: exported YAML differs from the original document")
        if doc != original:
            failures.append(f"{f.name}: registry mutated the input document")
    assert not failures, "\n".join(failures)
    assert len(reg) == len(catalog_model_files)
    for b in reg.bundles.names():
        assert reg.models_in_bundle(b) > 0


def test_catalog_replay_is_all_skipped(catalog_model_files: list[Path]) -> None:
    reg = Registry(shipped_bundles())
    docs = _load(catalog_model_files)
    for _, doc in docs:
        reg.put(doc, source="filesystem")
    before = {b: reg.bundle_hash(b) for b in reg.bundles.names()}
    for f, doc in docs:
        plan = reg.plan(yamlio.load(f.read_bytes()))
        assert plan.created == [] and plan.skipped == list(doc["profiles"]) and not plan.changed, f.name
    assert {b: reg.bundle_hash(b) for b in reg.bundles.names()} == before


def _reference_hash(adapters: set[str], docs: list[dict[str, Any]]) -> str:
    """Contract §7 over plain documents (independent of the incremental hasher)."""
    items = []
    for doc in sorted(docs, key=lambda d: d.get("sie_id") or d["name"]):
        profiles = doc["profiles"]
        if (
            not {p["adapter_path"].split(":")[0] for p in profiles.values() if p.get("adapter_path")}
            & adapters
        ):
            continue
        kept = []
        for name in sorted(profiles):
            p = profiles[name]
            if p.get("adapter_path") and p["adapter_path"].split(":")[0] not in adapters:
                continue
            options = p.get("adapter_options")
            if isinstance(options, dict) and not any(options.values()):
                options = None
            keys = ("adapter_path", "max_batch_tokens", "compute_precision")
            kept.append({"name": name, "config": {**{k: p.get(k) for k in keys}, "adapter_options": options}})
        items.append({"sie_id": doc.get("sie_id") or doc["name"], "profiles": kept})
    if not items:
        return ""
    text = json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def test_catalog_bundle_hashes_match_reference_in_any_insertion_order(
    catalog_dir: Path, catalog_model_files: list[Path]
) -> None:
    bundles = _bundles(catalog_dir)
    docs = [doc for _, doc in _load(catalog_model_files)]
    expected = {b.name: _reference_hash(set(b.adapters), docs) for b in bundles.bundles}
    assert all(expected.values())
    rng = random.Random(1234)
    for _ in range(3):
        order = list(docs)
        rng.shuffle(order)
        reg = Registry(bundles)
        for doc in order:
            # and split each model into two writes when it has several profiles
            names = list(doc["profiles"])
            rng.shuffle(names)
            profiles = doc["profiles"]
            first_names = set(names[: rng.randint(1, len(names))])
            first_names |= {profiles[n]["extends"] for n in first_names if profiles[n].get("extends")}
            modules = {
                profiles[n]["adapter_path"].split(":")[0]
                for n in first_names
                if profiles[n].get("adapter_path")
            }
            if not reg.bundles.route(modules):
                first_names = set(names)  # an extends-only first write cannot create a model
            first = {n: profiles[n] for n in names if n in first_names}
            rest = {n: profiles[n] for n in names if n not in first_names}
            reg.put({**doc, "profiles": first}, source="filesystem")
            if rest:
                reg.put({**doc, "profiles": rest})
        assert {b: reg.bundle_hash(b) for b in bundles.names()} == expected
