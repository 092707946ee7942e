"""The append-only registry: classification, conflicts, validation, routing, properties."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sie_operator.catalog import yamlio
from sie_operator.catalog.bundles import Bundle, BundleSet
from sie_operator.catalog.registry import (
    CaseConflict,
    ContentConflict,
    Registry,
    ValidationFailed,
    WriteRejected,
    same_value,
)

A = "sie_server.adapters.alpha"  # in t5 and default
B = "sie_server.adapters.beta"  # in default only
C = "sie_server.adapters.gamma"  # in sglang only
BUNDLES = BundleSet(
    (
        Bundle("sglang", 20, (C,)),
        Bundle("default", 10, (A, B), default=True),
        Bundle("transformers5", 5, (A,)),
    )
)


def prof(module: str = A, mbt: int = 8192, **extra: Any) -> dict[str, Any]:
    return {"adapter_path": f"{module}:Cls", "max_batch_tokens": mbt, **extra}


def model(mid: str = "org/m", **profiles: dict[str, Any]) -> dict[str, Any]:
    return {"sie_id": mid, "profiles": profiles or {"default": prof()}}


@pytest.fixture
def reg() -> Registry:
    return Registry(BUNDLES)


def state(r: Registry) -> dict[str, Any]:
    return {e.model_id: copy.deepcopy(e.doc) for e in r}


def hashes(r: Registry) -> dict[str, str]:
    return {b: r.bundle_hash(b) for b in r.bundles.names()}


# ---------------------------------------------------------------- classification


def test_new_model_all_created(reg: Registry) -> None:
    plan = reg.plan(model(default=prof(), fast=prof(mbt=1)))
    assert plan.created == ["default", "fast"] and plan.skipped == []
    assert plan.is_new and plan.changed and plan.model_id == "org/m"
    assert plan.bundles == ("transformers5", "default")
    assert len(reg) == 0 and reg.bundle_hash("default") == ""  # plan changes nothing
    entry = reg.apply(plan, epoch=7)
    assert entry.epoch == 7 and entry.source == "api"
    assert reg.get("org/m") is entry and reg.bundle_hash("default") != ""


def test_same_body_again_all_skipped(reg: Registry) -> None:
    reg.put(model(default=prof(), fast=prof(mbt=1)))
    before = hashes(reg)
    plan = reg.plan(model(default=prof(), fast=prof(mbt=1)))
    assert plan.created == [] and plan.skipped == ["default", "fast"]
    assert not plan.changed and not plan.is_new and plan.bundles_by_profile == {}
    assert hashes(reg) == before


def test_new_profile_with_same_old_splits_created_and_skipped(reg: Registry) -> None:
    reg.put(model(default=prof()))
    plan = reg.plan(model(default=prof(), custom=prof(B, 512)))
    assert plan.created == ["custom"] and plan.skipped == ["default"] and plan.changed
    assert list(plan.doc["profiles"]) == ["default", "custom"]
    assert plan.bundles_by_profile == {"custom": ["default"]}


def test_changed_canonical_field_is_content_conflict(reg: Registry) -> None:
    reg.put(model(default=prof(mbt=8192)))
    with pytest.raises(ContentConflict) as info:
        reg.plan(model(default=prof(mbt=4096)))
    exc = info.value
    assert exc.profiles == ["default"] and exc.fields == []
    assert exc.status == 409 and exc.error == "content_conflict" and exc.model_id == "org/m"
    assert "['default']" in str(exc) and "append-only" in str(exc)


@pytest.mark.parametrize(
    "old_new",
    [
        ({}, {"note": "x"}),
        ({"note": "x"}, {"note": "y"}),
        ({"note": "x"}, {}),
        ({"extends": None, "model_name": "m"}, {"model_name": "n"}),
    ],
)
def test_changed_non_canonical_key_conflicts_even_riding_along(
    reg: Registry, old_new: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    old, new = old_new
    reg.put(model(default=prof(**old)))
    # alone (pure replay) and riding along with a new profile (SIE bug §12.3 #10)
    for body in (model(default=prof(**new)), model(default=prof(**new), extra=prof(B))):
        with pytest.raises(ContentConflict) as info:
            reg.plan(body)
        assert info.value.profiles == ["default"]
    assert list(reg.get("org/m").profiles) == ["default"]  # type: ignore[union-attr]


def test_changed_top_level_field_conflicts(reg: Registry) -> None:
    reg.put({**model(), "description": "first", "hf_id": "org/m"})
    with pytest.raises(ContentConflict) as info:
        reg.plan({**model(default=prof(), fast=prof(B)), "description": "changed", "hf_id": "org/m"})
    assert info.value.fields == ["description"] and info.value.profiles == []
    assert "['description']" in str(info.value)
    # also on a pure replay (stricter than SIE, which silently ignores it)
    with pytest.raises(ContentConflict):
        reg.plan({**model(), "description": "changed"})


def test_profiles_and_fields_conflicts_reported_together(reg: Registry) -> None:
    reg.put({**model(default=prof(), b=prof(B)), "description": "x", "tags": ["a"]})
    with pytest.raises(ContentConflict) as info:
        reg.plan({**model(b=prof(B, 1), default=prof(mbt=2)), "tags": ["b"], "description": "y"})
    assert info.value.profiles == ["b", "default"]  # body order
    assert info.value.fields == ["description", "tags"]  # sorted


def test_new_top_level_field_is_added(reg: Registry) -> None:
    reg.put({**model(), "description": "first"})
    plan = reg.plan({**model(), "description": "first", "hf_revision": "main", "labels": {"team": "x"}})
    assert plan.added_fields == ["hf_revision", "labels"] and plan.created == [] and plan.changed
    entry = reg.apply(plan)
    assert entry.doc["hf_revision"] == "main" and entry.doc["labels"] == {"team": "x"}
    assert entry.doc["description"] == "first"
    # the identity key in its legacy spelling is neither added nor a conflict
    plan = reg.plan({"name": "org/m", "profiles": {"default": prof()}})
    assert plan.added_fields == [] and not plan.changed


def test_extra_top_level_keys_are_kept(reg: Registry) -> None:
    doc = {**model(), "description": "d", "default_bundle": "x", "custom": {"a": [1, 2]}}
    entry = reg.apply(reg.plan(doc))
    assert entry.doc == doc
    assert yamlio.load(entry.yaml_text) == doc


def test_true_is_not_one_but_8192_is_8192_0(reg: Registry) -> None:
    reg.put(model(default=prof(note=True, adapter_options={"runtime": {"max_len": 8192}})))
    with pytest.raises(ContentConflict):
        reg.plan(model(default=prof(note=1, adapter_options={"runtime": {"max_len": 8192}})))
    plan = reg.plan(model(default=prof(note=True, adapter_options={"runtime": {"max_len": 8192.0}})))
    assert plan.skipped == ["default"] and not plan.changed
    # same at the top level
    reg.put({**model("org/n"), "flag": True, "version": 2})
    with pytest.raises(ContentConflict) as info:
        reg.plan({**model("org/n"), "flag": 1, "version": 2.0})
    assert info.value.fields == ["flag"]


def test_same_value() -> None:
    assert same_value(8192, 8192.0) and same_value({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not same_value(True, 1) and not same_value(0, False) and not same_value(1.0, True)
    assert same_value(True, True) and not same_value(True, False)
    assert not same_value("1", 1) and not same_value([1], [1, 1]) and not same_value([1], {"a": 1})
    assert same_value({"a": 1, "b": 2}, {"b": 2, "a": 1})  # key order does not matter
    assert not same_value({"a": {}}, {})  # an empty map is not an absent one


def test_map_key_order_and_profile_order_do_not_matter(reg: Registry) -> None:
    reg.put(model(a=prof(), b=prof(B, adapter_options={"runtime": {"x": 1, "y": 2}})))
    body = model(b=prof(B, adapter_options={"runtime": {"y": 2, "x": 1}}), a=prof())
    body["profiles"]["a"] = dict(reversed(list(body["profiles"]["a"].items())))
    plan = reg.plan(body)
    assert plan.skipped == ["b", "a"] and not plan.changed


# ---------------------------------------------------------------------- validation


def test_unknown_adapter_message_covers_all_profiles(reg: Registry) -> None:
    reg.put(model(default=prof()))
    body = model(default=prof("z.mod"), new=prof("a.mod"), ok=prof(B))
    with pytest.raises(ValidationFailed) as info:
        reg.plan(body)
    assert info.value.messages == ["Adapter(s) not in any known bundle: a.mod, z.mod"]
    assert info.value.status == 422 and info.value.error == "validation_error"


def test_unknown_adapter_allowed_when_unroutable_allowed(reg: Registry) -> None:
    plan = reg.plan(model(default=prof("z.mod")), source="filesystem", allow_unroutable=True)
    assert plan.bundles == () and plan.bundles_by_profile == {"default": []}
    reg.apply(plan)
    # appending an extends-only profile to an unroutable model does not affect any bundle
    with pytest.raises(ValidationFailed) as info:
        reg.plan(model(tuned={"extends": "default"}))
    assert info.value.messages == [
        "Appending profile(s) ['tuned'] to model 'org/m' does not affect any bundle. "
        "Ensure at least one new profile has an `adapter_path` that a known bundle owns."
    ]


def test_extends_only_new_model_refused(reg: Registry) -> None:
    for profiles in (
        {"a": {"extends": "b"}, "b": {"extends": "a"}},
        {"a": {"extends": "a"}},
        {"a": {"extends": "missing"}},
    ):
        with pytest.raises(ValidationFailed):
            reg.plan({"sie_id": "org/x", "profiles": profiles})
    assert len(reg) == 0


def test_appending_extends_only_profile_to_routable_model(reg: Registry) -> None:
    reg.put(model(default=prof(B)))
    plan = reg.plan(model(tuned={"extends": "default", "compute_precision": "float16"}))
    assert plan.created == ["tuned"] and plan.bundles == ("default",)
    assert plan.bundles_by_profile == {"tuned": ["default"]}  # served where its parent is
    entry = reg.apply(plan)
    assert list(entry.profiles) == ["default", "tuned"]


@pytest.mark.parametrize(
    ("profiles", "needle"),
    [
        ({"tuned": {"extends": "nope"}}, "Profile 'tuned' extends unknown profile 'nope'"),
        ({"tuned": {"extends": "tuned"}}, "Profile 'tuned' extends itself"),
        ({"t1": {"extends": "default"}, "t2": {"extends": "t1"}}, "Profile 't2' extends 't1', which itself"),
    ],
)
def test_bad_extends_refused(reg: Registry, profiles: dict[str, Any], needle: str) -> None:
    reg.put(model(default=prof()))
    with pytest.raises(ValidationFailed) as info:
        reg.plan({"sie_id": "org/m", "profiles": profiles})
    assert any(needle in m for m in info.value.messages), info.value.messages
    # chained extends inside a new model too
    with pytest.raises(ValidationFailed):
        reg.plan({"sie_id": "org/new", "profiles": {"default": prof(), **profiles}})


def test_chained_extends_onto_existing_extending_profile_refused(reg: Registry) -> None:
    reg.put(model(default=prof(), t1={"extends": "default"}))
    with pytest.raises(ValidationFailed) as info:
        reg.plan(model(t2={"extends": "t1"}))
    assert "Profile 't2' extends 't1', which itself extends another profile" in info.value.messages[0]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"profiles": {"d": prof()}}, "Missing required field: sie_id"),
        ({"sie_id": "", "profiles": {"d": prof()}}, "Missing required field: sie_id"),
        ({"sie_id": "a"}, "profiles"),
        ({"sie_id": "a", "profiles": {}}, "at least one profile is required"),
        ({"sie_id": "a", "profiles": []}, "profiles"),
        ({"sie_id": "a", "profiles": {"d": "x"}}, "profiles.d"),
        ({"sie_id": "a", "profiles": {"d": {"max_batch_tokens": 1}}}, "needs an adapter_path or extends"),
        ({"sie_id": 5, "profiles": {"d": prof()}}, "sie_id"),
        ({"sie_id": "a__b", "profiles": {"d": prof()}}, "'__'"),
        ({"sie_id": "a", "name": "b", "profiles": {"d": prof()}}, "disagree"),
        ({"sie_id": "a", "profiles": {"d": {"adapter_path": 3}}}, "adapter_path"),
        ({"sie_id": "a", "profiles": {"d": {"adapter_path": "no-colon"}}}, "adapter_path"),
        ({"sie_id": "a", "profiles": {"d": prof(mbt=0)}}, "max_batch_tokens"),
        ({"sie_id": "a", "profiles": {"d": prof(mbt=2**32)}}, "max_batch_tokens"),
        ({"sie_id": "a", "profiles": {"d": {**prof(), "max_batch_tokens": True}}}, "max_batch_tokens"),
        ({"sie_id": "a", "profiles": {"d": {**prof(), "max_batch_tokens": 8192.0}}}, "max_batch_tokens"),
        ({"sie_id": "a", "profiles": {"d": prof(compute_precision="fp8")}}, "compute_precision"),
        ({"sie_id": "a", "profiles": {"d": prof(adapter_options={"runtime": 1})}}, "runtime"),
        ({"sie_id": "a", "profiles": {"bad name": prof()}}, "profile name"),
        ({"sie_id": "a", "profiles": {f"p{i}": prof() for i in range(65)}}, "at most 64"),
        ({"sie_id": "a", "max_sequence_length": "x", "profiles": {"d": prof()}}, "max_sequence_length"),
        ({"sie_id": "a", "package_backed": "yes", "profiles": {"d": prof()}}, "package_backed"),
        ({"sie_id": "a", "tasks": {"encode": {"dense": {"dim": 0}}}, "profiles": {"d": prof()}}, "dim"),
    ],
)
def test_schema_refusals_are_validation_failed(reg: Registry, body: Any, needle: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        reg.plan(body)
    assert any(needle in m for m in info.value.messages), info.value.messages


def test_non_mapping_body(reg: Registry) -> None:
    for body in (None, [], "sie_id: a", 3):
        with pytest.raises(ValidationFailed) as info:
            reg.plan(body)
        assert info.value.messages == ["Expected a mapping at top level"]


def _nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({1, 2}, "type set"),
        (b"bytes", "type bytes"),
        (math.nan, "not a finite number"),
        (math.inf, "not a finite number"),
        (2**64, "64-bit"),
        (-(2**63) - 1, "64-bit"),
        ({1: "x"}, "not a string"),
        ({None: "x"}, "not a string"),
        ((1, 2), "type tuple"),
        (_nested(40), "nested deeper"),
        (_nested(3000), "nested deeper"),
        ([0] * 200_000, "more than"),
    ],
)
def test_non_json_data_refused_before_it_can_break_apply(reg: Registry, value: Any, needle: str) -> None:
    """Data YAML can produce but JSON/orjson cannot carry is refused at plan time.

    Without this, a set or bytes in adapter_options passed plan() and then made apply()
    raise TypeError (after the write was persisted); .nan never equalled its own replay.
    """
    body = model(default=prof(adapter_options={"loadtime": {"v": value}}))
    with pytest.raises(ValidationFailed) as info:
        reg.plan(body)
    assert needle in info.value.messages[0]
    assert "profiles.default.adapter_options.loadtime.v" in info.value.messages[0] or needle == "more than"
    # also as a top-level field and inside a non-canonical profile key
    for other in ({**model(), "extra": value}, model(default=prof(note=value))):
        with pytest.raises(ValidationFailed):
            reg.plan(other)


def test_json_limits_accept_ordinary_values(reg: Registry) -> None:
    value = {"i": 2**64 - 1, "n": -(2**63), "f": 1e-6, "s": "é", "l": [None, True, 1.5], "d": _nested(20)}
    entry = reg.apply(reg.plan(model(default=prof(adapter_options={"runtime": value}))))
    assert entry.profiles["default"]["adapter_options"]["runtime"] == value
    assert reg.bundle_hash("default")


def test_yaml_quirks_end_to_end(reg: Registry) -> None:
    """A YAML 1.1 date is a string (YAML 1.2), a `!!set` is refused, a `.nan` is refused."""
    head = "sie_id: org/m\nhf_revision: 2024-01-01\nprofiles:\n  default:\n"
    head += f"    adapter_path: {A}:X\n    max_batch_tokens: 8\n"
    plan = reg.plan(yamlio.load(head))
    assert plan.doc["hf_revision"] == "2024-01-01"
    for tail in ("    note: !!set {a, b}\n", "    note: .nan\n", "    note: !!binary aGk=\n"):
        with pytest.raises(ValidationFailed):
            reg.plan(yamlio.load(head + tail))


# ------------------------------------------------------------- ids, case, routing


def test_case_different_id_refused(reg: Registry) -> None:
    reg.put(model("Org/Model"))
    with pytest.raises(CaseConflict) as info:
        reg.plan(model("org/model"))
    exc = info.value
    assert exc.status == 409 and exc.error == "model_id_case_conflict"
    assert exc.model_id == "org/model" and exc.existing == "Org/Model"
    assert isinstance(exc, WriteRejected)
    # the exact id is still an append target, and lookups are case-insensitive
    assert reg.plan(model("Org/Model")).skipped == ["default"]
    assert reg.lookup("ORG/MODEL") is reg.get("Org/Model") is not None
    assert reg.get("org/model") is None


def test_lookup_prefers_exact_match(reg: Registry) -> None:
    reg.put(model("org/m"))
    assert reg.lookup("org/m") is reg.get("org/m")
    assert reg.lookup("nope") is None


def test_bundles_by_profile_is_per_profile(reg: Registry) -> None:
    plan = reg.plan(
        model(
            a=prof(A),
            b=prof(B),
            c=prof(C),
            d={"extends": "c", "compute_precision": "float32"},
        )
    )
    assert plan.bundles == ("transformers5", "default", "sglang")
    assert plan.bundles_by_profile == {
        "a": ["transformers5", "default"],
        "b": ["default"],
        "c": ["sglang"],
        "d": ["sglang"],
    }
    assert plan.modules == frozenset({A, B, C})


def test_affected_bundles_ties_by_name() -> None:
    for order in ((("zeta", 10), ("alpha", 10), ("mid", 5)), (("alpha", 10), ("mid", 5), ("zeta", 10))):
        bundles = BundleSet(tuple(Bundle(n, p, (A,)) for n, p in order))
        r = Registry(bundles)
        plan = r.plan(model())
        assert plan.bundles == ("mid", "alpha", "zeta")
        assert plan.bundles_by_profile == {"default": ["mid", "alpha", "zeta"]}


def test_affected_bundles_after_append_include_existing_modules(reg: Registry) -> None:
    reg.put(model(default=prof(C)))
    plan = reg.plan(model(default=prof(C), extra=prof(B)))
    assert plan.bundles == ("default", "sglang")
    assert plan.bundles_by_profile == {"extra": ["default"]}
    reg.apply(plan)
    assert reg.get("org/m").bundles == ("default", "sglang")  # type: ignore[union-attr]
    assert reg.models_in_bundle("default") == 1 and reg.models_in_bundle("sglang") == 1
    assert reg.models_in_bundle("transformers5") == 0


def test_baseline_model_with_api_append_keeps_baseline_profiles(reg: Registry) -> None:
    baseline = {**model(default=prof(), fast=prof(mbt=16)), "hf_id": "org/m", "description": "base"}
    entry = reg.apply(reg.plan(baseline, source="filesystem"))
    assert entry.source == "filesystem"
    plan = reg.plan({"sie_id": "org/m", "profiles": {"custom": prof(B)}})
    assert plan.created == ["custom"] and plan.skipped == []
    assert list(plan.doc["profiles"]) == ["default", "fast", "custom"]
    assert plan.doc["hf_id"] == "org/m" and plan.doc["description"] == "base"
    entry = reg.apply(plan)
    assert entry.source == "api"
    assert list(yamlio.load(entry.yaml_text)["profiles"]) == ["default", "fast", "custom"]


def test_plan_does_not_alias_body_or_stored_doc(reg: Registry) -> None:
    body = model(default=prof(adapter_options={"runtime": {"x": [1]}}))
    entry = reg.apply(reg.plan(body))
    body["profiles"]["default"]["adapter_options"]["runtime"]["x"].append(2)
    assert entry.profiles["default"]["adapter_options"]["runtime"]["x"] == [1]
    plan = reg.plan(model(default=prof(adapter_options={"runtime": {"x": [1]}}), new=prof()))
    plan.doc["profiles"]["default"]["max_batch_tokens"] = 1
    assert entry.profiles["default"]["max_batch_tokens"] == 8192


def test_iteration_in_id_order_and_yaml_text(reg: Registry) -> None:
    for mid in ("b/x", "B/y", "a", "a/b", "a-b"):
        reg.put(model(mid))
    assert [e.model_id for e in reg] == sorted(["b/x", "B/y", "a", "a/b", "a-b"])
    entry = reg.get("a/b")
    assert entry is not None and yamlio.load(entry.yaml_text) == entry.doc
    assert reg.apply(reg.plan(model("c")), yaml_text="given").yaml_text == "given"


# ------------------------------------------------------------------ properties

_NAMES = ["default", "fast", "slow", "t1", "t2"]
_CONTENT = [
    prof(A),
    prof(A, 1),
    prof(B, compute_precision="float16"),
    prof(C, adapter_options={"runtime": {"x": 1}}),
    prof(A, note="n"),
    {"extends": "default"},
    {"extends": "fast", "compute_precision": "bfloat16"},
]
_write = st.tuples(
    st.sampled_from(["org/a", "org/b"]),
    st.dictionaries(st.sampled_from(_NAMES), st.sampled_from(range(len(_CONTENT))), min_size=1),
    st.sampled_from([None, "one", "two"]),
)


@settings(max_examples=300, deadline=None)
@given(writes=st.lists(_write, min_size=1, max_size=25))
def test_append_only_never_loses_or_changes_profiles(
    writes: list[tuple[str, dict[str, int], str | None]],
) -> None:
    reg = Registry(BUNDLES)
    for mid, chosen, description in writes:
        body: dict[str, Any] = {
            "sie_id": mid,
            "profiles": {name: copy.deepcopy(_CONTENT[i]) for name, i in chosen.items()},
        }
        if description is not None:
            body["description"] = description
        before = state(reg)
        before_hashes = hashes(reg)
        stored = before.get(mid, {}).get("profiles", {})
        try:
            plan = reg.plan(body)
        except ContentConflict as exc:
            event("conflict")
            expected = [n for n in body["profiles"] if n in stored and stored[n] != body["profiles"][n]]
            assert exc.profiles == expected
            old_desc = before.get(mid, {}).get("description")
            changed = None not in (description, old_desc) and old_desc != description
            assert exc.fields == (["description"] if changed else [])
            assert exc.profiles or exc.fields
        except ValidationFailed:
            event("validation failed")
            # only extends problems (or an unroutable new model) are expected here
            assert any("extends" in str(body["profiles"][n]) for n in body["profiles"] if n not in stored)
        else:
            event("created" if plan.created else "replay" if not plan.changed else "fields added")
            order = list(body["profiles"])
            assert sorted(plan.created + plan.skipped) == sorted(order)  # a partition ...
            assert plan.created == [n for n in order if n in plan.created]  # ... each in body order
            assert plan.skipped == [n for n in order if n in plan.skipped]
            assert set(plan.created).isdisjoint(stored) and set(plan.skipped) <= set(stored)
            assert plan.changed == bool(plan.created or plan.added_fields or plan.is_new)
            reg.apply(plan)
            after = reg.get(mid)
            assert after is not None
            for name, old in stored.items():  # never lost, never changed
                assert after.profiles[name] == old
            for name in plan.created:
                assert after.profiles[name] == body["profiles"][name]
            assert set(after.profiles) == set(stored) | set(plan.created)
            continue
        assert state(reg) == before and hashes(reg) == before_hashes  # a refusal changes nothing
