"""bundles_hash and bundle_config_hash: contract test vectors and properties of the incremental hasher."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sie_operator.catalog import hashing
from sie_operator.catalog.bundles import Bundle, BundleSet, shipped_bundles
from sie_operator.catalog.hashing import (
    BundleHasher,
    bundle_config_hash_of,
    bundles_hash,
    canonical_options,
    model_fragment,
)
from sie_operator.catalog.registry import Registry

BF = "sie_server.adapters.bert_flash"
ST = "sie_server.adapters.sentence_transformer"
ST_PATH = f"{ST}:SentenceTransformerAdapter"
E5 = "intfloat/multilingual-e5-base"
V2_OPTIONS = {"loadtime": {}, "runtime": {"pooling": "mean", "normalize": True}}


def one_bundle(*modules: str, name: str = "default", priority: int = 10) -> BundleSet:
    return BundleSet((Bundle(name, priority, tuple(modules)),))


def reference_bundle_hash(bundle: Bundle, docs: list[dict[str, Any]]) -> str:
    """Contract §7 restated independently (json.dumps, no incremental state)."""
    adapters = set(bundle.adapters)
    items = []
    for doc in sorted(docs, key=lambda d: d.get("sie_id") or d["name"]):
        profiles = doc["profiles"]
        modules = {p["adapter_path"].split(":")[0] for p in profiles.values() if p.get("adapter_path")}
        if not modules & adapters:
            continue
        kept = []
        for name in sorted(profiles):
            raw = profiles[name]
            path = raw.get("adapter_path")
            if path and path.split(":")[0] not in adapters:
                continue
            options = raw.get("adapter_options")
            if isinstance(options, dict) and not any(options.values()):
                options = None
            config = {
                "adapter_path": path,
                "max_batch_tokens": raw.get("max_batch_tokens"),
                "compute_precision": raw.get("compute_precision"),
                "adapter_options": options,
            }
            kept.append({"name": name, "config": config})
        items.append({"sie_id": doc.get("sie_id") or doc["name"], "profiles": kept})
    if not items:
        return ""
    text = json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- bundles_hash


def test_bundles_hash_vector_single_bundle() -> None:
    expected_text = '[{"adapters":["sie_server.adapters.bert_flash"],"name":"default","priority":10}]'
    assert hashlib.sha256(expected_text.encode()).hexdigest() == (
        "4ec6fcefdf0fb2069fab586375e1b82d469a300b290172dfe82467d86eeac819"
    )
    assert bundles_hash([("default", 10, [BF])]) == (
        "4ec6fcefdf0fb2069fab586375e1b82d469a300b290172dfe82467d86eeac819"
    )
    assert one_bundle(BF).hash == "4ec6fcefdf0fb2069fab586375e1b82d469a300b290172dfe82467d86eeac819"


def test_bundles_hash_vector_gateway_contract() -> None:
    # gateway contract §3.8
    assert bundles_hash([("default", 10, [ST])]) == (
        "57931871e724d80781859cc8c3bb2ec75df6a1fdc91097148a223c815582ba89"
    )


def test_bundles_hash_vector_shipped_bundles() -> None:
    shipped = shipped_bundles()
    assert [(b.name, b.priority, len(b.adapters)) for b in shipped.bundles] == [
        ("transformers5", 5, 2),
        ("default", 10, 40),
        ("sglang", 20, 1),
    ]
    assert shipped.get("default") is not None and shipped.get("default").default  # type: ignore[union-attr]
    assert shipped.hash == "a77596bdce1061b374e518e88e705252550f3a138f1a002c8cde744970bfbab0"


def test_bundles_hash_empty_and_excluded_fields() -> None:
    assert bundles_hash([]) == ""
    assert BundleSet(()).hash == ""
    # the default flag is not part of the hash
    flagged = BundleSet((Bundle("default", 10, (BF,), default=True),))
    assert flagged.hash == one_bundle(BF).hash


def test_bundles_hash_changes_with_content() -> None:
    base = bundles_hash([("default", 10, [BF])])
    assert bundles_hash([("default", 10, [BF, ST])]) != base
    assert bundles_hash([("default", 11, [BF])]) != base
    assert bundles_hash([("other", 10, [BF])]) != base


def test_bundles_hash_escapes_non_ascii() -> None:
    # Python json.dumps default: ensure_ascii
    text = '[{"adapters":["m\\u00e9"],"name":"b","priority":1}]'
    assert bundles_hash([("b", 1, ["mé"])]) == hashlib.sha256(text.encode()).hexdigest()


_module = st.text(alphabet="abcdefgh._", min_size=1, max_size=8)
_bundle_specs = st.dictionaries(
    st.text(alphabet="abcxyz0-", min_size=1, max_size=6),
    st.tuples(st.integers(-5, 50), st.lists(_module, max_size=6)),
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(specs=_bundle_specs, data=st.data())
def test_bundles_hash_independent_of_adapter_and_bundle_order(
    specs: dict[str, tuple[int, list[str]]], data: st.DataObject
) -> None:
    items = [(name, prio, adapters) for name, (prio, adapters) in specs.items()]
    shuffled = [
        (name, prio, data.draw(st.permutations(adapters)))
        for name, prio, adapters in data.draw(st.permutations(items))
    ]
    assert bundles_hash(shuffled) == bundles_hash(items)
    as_sets = BundleSet(tuple(Bundle(n, p, tuple(a)) for n, p, a in shuffled))
    assert as_sets.hash == bundles_hash(items)


# --------------------------------------------------------------------- bundle_config_hash


def test_config_contract_v1() -> None:
    reg = Registry(one_bundle(BF))
    reg.put(
        {
            "sie_id": "test/model",
            "profiles": {"default": {"adapter_path": f"{BF}:BertFlashAdapter", "max_batch_tokens": 8192}},
        }
    )
    text = (
        '[{"profiles":[{"config":{"adapter_options":null,"adapter_path":'
        '"sie_server.adapters.bert_flash:BertFlashAdapter","compute_precision":null,'
        '"max_batch_tokens":8192},"name":"default"}],"sie_id":"test/model"}]'
    )
    frag = model_fragment("test/model", reg.get("test/model").profiles, frozenset([BF]))  # type: ignore[union-attr]
    assert frag is not None
    assert b"[" + frag + b"]" == text.encode()
    assert reg.bundle_hash("default") == "23f6207c437aaff461f1da11350d3cbd16cce4b91844a98d15a86620a60209a1"
    assert hashlib.sha256(text.encode()).hexdigest() == reg.bundle_hash("default")


def test_config_contract_v2() -> None:
    reg = Registry(one_bundle(BF))
    reg.put(
        {
            "sie_id": "test/model",
            "profiles": {"default": {"adapter_path": f"{BF}:BertFlashAdapter", "max_batch_tokens": 8192}},
        }
    )
    reg.put(
        {
            "sie_id": "a/m",
            "profiles": {
                "base": {
                    "adapter_path": f"{BF}:B",
                    "max_batch_tokens": 1024,
                    "compute_precision": "bfloat16",
                    "adapter_options": {"loadtime": {}, "runtime": {"pooling": "mean", "normalize": True}},
                },
                "derived": {"extends": "base", "adapter_options": {"runtime": {"instruction": "x"}}},
                "empty": {
                    "adapter_path": f"{BF}:B",
                    "max_batch_tokens": 1,
                    "adapter_options": {"loadtime": {}, "runtime": {}},
                },
            },
        }
    )
    assert reg.bundle_hash("default") == "d48637cebbc2c8eacb97f49829fad2b96a30fb0d08e2f26142dc1858a8857071"
    frag = model_fragment("a/m", reg.get("a/m").profiles, frozenset([BF]))  # type: ignore[union-attr]
    parsed = json.loads(frag or b"")
    by_name = {p["name"]: p["config"] for p in parsed["profiles"]}
    assert by_name["derived"] == {
        "adapter_path": None,
        "max_batch_tokens": None,
        "compute_precision": None,
        "adapter_options": {"runtime": {"instruction": "x"}},
    }
    assert by_name["empty"]["adapter_options"] is None


def _e5(options: dict[str, Any] | None = None, **extra_profiles: dict[str, Any]) -> dict[str, Any]:
    default: dict[str, Any] = {"adapter_path": ST_PATH, "max_batch_tokens": 8192}
    if options is not None:
        default["adapter_options"] = options
    return {"sie_id": E5, "profiles": {"default": default, **extra_profiles}}


def test_gateway_contract_v1() -> None:
    reg = Registry(one_bundle(ST))
    reg.put(_e5())
    text = (
        '[{"profiles":[{"config":{"adapter_options":null,"adapter_path":'
        '"sie_server.adapters.sentence_transformer:SentenceTransformerAdapter","compute_precision":null,'
        '"max_batch_tokens":8192},"name":"default"}],"sie_id":"intfloat/multilingual-e5-base"}]'
    )
    expected = "2657f7adbd2b10b5d0578b395daabb04522fc0daa62448adec0d226ea5d6b4f2"
    assert hashlib.sha256(text.encode()).hexdigest() == expected
    assert reg.bundle_hash("default") == expected


def test_gateway_contract_v2() -> None:
    reg = Registry(one_bundle(ST))
    reg.put(_e5(V2_OPTIONS))
    assert reg.bundle_hash("default") == "918f71cf1be893ffb64ad78efb49f24a1194097f4d7c3b109beee76d8c28a5cd"


def test_gateway_contract_v3_runtime_only_options_hashed_as_written() -> None:
    reg = Registry(one_bundle(ST))
    reg.put(_e5({"runtime": {"pooling": "mean", "normalize": True}}))
    assert reg.bundle_hash("default") == "2187dab57a747fba29f9a98d369411c4dc4ed5eebb830cb2a8b3153aafd21eab"


def test_gateway_contract_v4_two_models_with_extends_only_profile() -> None:
    # the bundle owns more modules than the ones used: only membership matters
    reg = Registry(one_bundle(BF, ST))
    medical = {
        "extends": "default",
        "adapter_options": {"loadtime": {}, "runtime": {"instruction": "Retrieve medical literature"}},
    }
    reg.put(_e5(V2_OPTIONS, medical=medical))
    reg.put(
        {
            "sie_id": "BAAI/bge-small-en-v1.5",
            "profiles": {
                "default": {"adapter_path": ST_PATH, "max_batch_tokens": 4096, "compute_precision": "float16"}
            },
        }
    )
    assert reg.bundle_hash("default") == "7e405962c71aa2d62b9e18013fde5148fba9f7aa8d524e61c28a843a9e8fbed8"
    # the same models inserted the other way round
    other = Registry(one_bundle(ST, BF))
    for doc in reversed([r.doc for r in reg]):
        other.put(doc)
    assert other.bundle_hash("default") == reg.bundle_hash("default")


def test_bundle_hash_empty_unknown_and_scoped() -> None:
    bundles = BundleSet((Bundle("default", 10, (BF,)), Bundle("sglang", 20, ("sie_server.adapters.sglang",))))
    reg = Registry(bundles)
    assert reg.bundle_hash("default") == ""
    assert reg.bundle_hash("nope") == ""
    reg.put({"sie_id": "a/b", "profiles": {"default": {"adapter_path": f"{BF}:X", "max_batch_tokens": 8}}})
    h = reg.bundle_hash("default")
    assert len(h) == 64 and int(h, 16) >= 0
    assert reg.bundle_hash("sglang") == ""
    reg.put({"sie_id": "a/c", "profiles": {"default": {"adapter_path": f"{BF}:X", "max_batch_tokens": 8}}})
    assert reg.bundle_hash("default") != h


def test_profiles_of_other_bundles_are_left_out() -> None:
    sg = "sie_server.adapters.sglang"
    bundles = BundleSet((Bundle("default", 10, (BF,)), Bundle("sglang", 20, (sg,))))
    reg = Registry(bundles)
    doc = {
        "sie_id": "m",
        "profiles": {
            "default": {"adapter_path": f"{BF}:X", "max_batch_tokens": 8},
            "fast": {"adapter_path": f"{sg}:Y", "max_batch_tokens": 16},
            "tuned": {"extends": "fast", "compute_precision": "float16"},
        },
    }
    reg.put(doc)
    for b in bundles.bundles:
        assert reg.bundle_hash(b.name) == reference_bundle_hash(b, [doc])
    frag = json.loads(model_fragment("m", doc["profiles"], frozenset([sg])) or b"")
    # extends-only profiles are kept in every bundle of the model
    assert [p["name"] for p in frag["profiles"]] == ["fast", "tuned"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (None, None),
        ({}, None),
        ({"loadtime": {}, "runtime": {}}, None),
        ({"loadtime": None, "runtime": 0, "x": "", "y": [], "z": False, "w": 0.0}, None),
        ({"runtime": {"a": 1}}, {"runtime": {"a": 1}}),
        ({"loadtime": {}, "runtime": {"a": 1}}, {"loadtime": {}, "runtime": {"a": 1}}),
        ("weird", "weird"),
    ],
)
def test_canonical_options(options: Any, expected: Any) -> None:
    assert canonical_options(options) == expected


def test_fragment_keys_sorted_at_every_depth_and_raw_utf8() -> None:
    frag = model_fragment(
        "m",
        {"p": {"adapter_path": f"{BF}:X", "adapter_options": {"runtime": {"z": 1, "a": "é"}}}},
        frozenset([BF]),
    )
    assert frag is not None
    assert b'{"runtime":{"a":"\xc3\xa9","z":1}}' in frag


# ------------------------------------------------------------ incremental BundleHasher


@contextmanager
def checkpoint_every(n: int) -> Iterator[None]:
    with mock.patch.object(hashing, "_CHECKPOINT_EVERY", n):
        yield


def _check(hasher: BundleHasher, model: dict[str, bytes]) -> None:
    ordered = [model[k] for k in sorted(model)]
    assert hasher.digest() == bundle_config_hash_of(ordered)
    assert hasher.fragments() == ordered
    assert len(hasher) == len(model)


_ids = st.text(alphabet="aAbB/-.z09", min_size=1, max_size=4)
_frag = st.sampled_from([b"x", b"y", b"zz", b'{"k":1}', b"", b"\xff"])
# an op is (id, fragment) with None meaning removal, or "digest" to force a (partial) rehash
_op = st.one_of(st.tuples(_ids, st.one_of(st.none(), _frag)), st.just("digest"))


@pytest.mark.parametrize("every", [1, 2, 3, 7, 32])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.dictionaries(_ids, _frag, max_size=120),
    order_seed=st.randoms(use_true_random=False),
    ops=st.lists(_op, max_size=80),
)
def test_incremental_hash_equals_full_recompute(
    every: int, initial: dict[str, bytes], order_seed: random.Random, ops: list[Any]
) -> None:
    with checkpoint_every(every):
        hasher = BundleHasher()
        model: dict[str, bytes] = {}
        items = list(initial.items())
        order_seed.shuffle(items)
        for i, (mid, frag) in enumerate(items):
            hasher.set(mid, frag)
            model[mid] = frag
            if i % 5 == 0:
                _check(hasher, model)
        _check(hasher, model)
        for op in ops:
            if op == "digest":
                _check(hasher, model)
                continue
            mid, frag = op
            hasher.set(mid, frag)
            if frag is None:
                model.pop(mid, None)
            else:
                model[mid] = frag
            assert (mid in hasher) == (mid in model)
        _check(hasher, model)


@pytest.mark.parametrize("every", [2, 32])
def test_incremental_hash_every_position_many_ids(every: int) -> None:
    """Deterministic sweep: 150 ids (several checkpoints), change/insert/remove at every position."""
    rng = random.Random(every)
    ids = [f"org{i:03d}/m" for i in range(150)]
    with checkpoint_every(every):
        hasher = BundleHasher()
        model: dict[str, bytes] = {}
        for mid in rng.sample(ids, len(ids)):
            hasher.set(mid, mid.encode())
            model[mid] = mid.encode()
            _check(hasher, model)
        for mid in sorted(ids):  # replace each one, digest in between (checkpoints rebuilt each time)
            hasher.set(mid, b"v2" + mid.encode())
            model[mid] = b"v2" + mid.encode()
            _check(hasher, model)
        for mid in rng.sample(ids, len(ids)):  # remove all, in random order
            hasher.set(mid, None)
            del model[mid]
            _check(hasher, model)
        assert hasher.digest() == ""


def test_hasher_noops() -> None:
    hasher = BundleHasher()
    assert hasher.digest() == ""
    hasher.set("gone", None)  # removing an absent id is a no-op
    assert hasher.digest() == "" and len(hasher) == 0
    hasher.set("a", b"1")
    first = hasher.digest()
    hasher.set("a", b"1")  # same fragment again: unchanged
    assert hasher.digest() == first == bundle_config_hash_of([b"1"])
    assert bundle_config_hash_of([]) == ""


# --------------------------------------------------------- registry hash is order-free

_BUNDLES = BundleSet(
    (
        Bundle("t5", 5, ("mod.a",)),
        Bundle("default", 10, ("mod.a", "mod.b")),
        Bundle("sg", 20, ("mod.c",)),
    )
)
_profile = st.one_of(
    st.fixed_dictionaries(
        {"adapter_path": st.sampled_from(["mod.a:A", "mod.b:B", "mod.c:C"])},
        optional={
            "max_batch_tokens": st.integers(1, 2**32 - 1),
            "compute_precision": st.sampled_from(["float16", "bfloat16", "float32"]),
            "adapter_options": st.fixed_dictionaries(
                {},
                optional={
                    "loadtime": st.dictionaries(st.sampled_from("xyz"), st.integers(0, 3), max_size=2),
                    "runtime": st.dictionaries(
                        st.sampled_from("xyz"), st.one_of(st.booleans(), st.text(max_size=3)), max_size=2
                    ),
                },
            ),
            "note": st.text(max_size=5),
        },
    ),
)
_models = st.dictionaries(
    st.text(alphabet="abAB/.-z", min_size=1, max_size=5).filter(
        lambda s: s[0].isalnum() and not s.endswith("/") and "//" not in s and ".." not in s
    ),
    st.dictionaries(
        st.sampled_from(["default", "fast", "slow", "x1", "Y"]), _profile, min_size=1, max_size=4
    ),
    max_size=12,
)


def _reordered(doc_profiles: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    names = list(doc_profiles)
    rnd.shuffle(names)
    return {n: doc_profiles[n] for n in names}


@settings(max_examples=100, deadline=None)
@given(models=_models, rnd=st.randoms(use_true_random=False), split=st.booleans())
def test_registry_bundle_hash_independent_of_insertion_and_profile_order(
    models: dict[str, dict[str, Any]], rnd: random.Random, split: bool
) -> None:
    # case-different ids are refused by the registry; keep one spelling per lower-cased id
    unique: dict[str, tuple[str, dict[str, Any]]] = {}
    for mid, profiles in models.items():
        unique.setdefault(mid.lower(), (mid, profiles))
    docs = [{"sie_id": mid, "profiles": profiles} for mid, profiles in unique.values()]

    forward = Registry(_BUNDLES)
    for doc in docs:
        forward.put(doc, source="filesystem")

    backward = Registry(_BUNDLES)
    shuffled = list(docs)
    rnd.shuffle(shuffled)
    for doc in shuffled:
        profiles = _reordered(doc["profiles"], rnd)
        if split and len(profiles) > 1:  # the same content in two appends
            names = list(profiles)
            backward.put({"sie_id": doc["sie_id"], "profiles": {n: profiles[n] for n in names[:1]}})
            backward.put({"sie_id": doc["sie_id"], "profiles": {n: profiles[n] for n in names[1:]}})
        else:
            backward.put({"sie_id": doc["sie_id"], "profiles": profiles})

    for bundle in _BUNDLES.bundles:
        expected = reference_bundle_hash(bundle, docs)
        assert forward.bundle_hash(bundle.name) == expected
        assert backward.bundle_hash(bundle.name) == expected
