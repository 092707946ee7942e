"""The Config API over real HTTP: every endpoint, status code, error code and shape."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from typing import Any

import orjson
import pytest
from cfgsvc_helpers import ADMIN, BERT, INFER, SGLANG, Api, MakeApi, file_store, model_yaml

from sie_operator.catalog.hashing import bundles_hash
from sie_operator.configsvc.metrics import Metrics

APPENDIX_A = (
    "sie_id: acme/bert\ndescription: first\nprofiles:\n  default:\n"
    "    adapter_path: sie_server.adapters.bert_flash:B\n    max_batch_tokens: 4096\n"
)


async def _json(resp: Any) -> Any:
    return orjson.loads(await resp.read())


async def raw_request(api: Api, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes (for headers aiohttp's client would refuse to send)."""
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    writer.close()
    return int(head.split(b" ", 2)[1]), body


# -- probes and routing -------------------------------------------------------------------


async def test_probes(make_api: MakeApi) -> None:
    api = await make_api()
    r = await api.client.get("/healthz")
    assert r.status == 200 and await r.read() == b'{"status":"ok"}'
    r = await api.client.get("/readyz")
    assert r.status == 200
    assert await _json(r) == {
        "status": "ready",
        "checks": {"registry": "ok", "store": "ok", "nats": "disabled"},
    }


async def test_unknown_path_and_wrong_method(make_api: MakeApi) -> None:
    api = await make_api()
    r = await api.client.get("/nope")
    assert r.status == 404 and await r.read() == b'{"detail":"Not Found"}'
    assert r.headers["Content-Type"] == "application/json"
    r = await api.client.put("/v1/configs/models", data=b"x")
    assert r.status == 405 and await r.read() == b'{"detail":"Method Not Allowed"}'
    r = await api.client.delete("/v1/configs/models/acme/bert")
    assert r.status == 405


async def test_without_registry_everything_but_epoch_is_503(make_api: MakeApi) -> None:
    api = await make_api(start=False)
    r = await api.client.get("/readyz")
    assert r.status == 503
    body = await _json(r)
    assert body["detail"] == "Model registry not loaded" and body["checks"]["registry"] == "not loaded"
    calls = [
        api.client.get("/v1/configs/models"),
        api.client.get("/v1/configs/models/test/model"),
        api.client.post("/v1/configs/models", data=APPENDIX_A),
        api.client.post("/v1/configs/resolve", data=b'{"model":"test/model"}'),
        api.client.get("/v1/configs/bundles"),
        api.client.get("/v1/configs/bundles/default"),
        api.client.get("/v1/configs/export"),
    ]
    for call in calls:
        r = await call
        assert r.status == 503
        assert (await _json(r))["detail"]["error"] == "registry_unavailable"
    r = await api.client.get("/v1/configs/epoch")
    assert r.status == 200 and await r.read() == b'{"epoch":0,"bundles_hash":""}'
    assert (await api.client.get("/healthz")).status == 200


# -- models: list and get -----------------------------------------------------------------


async def test_list_models(make_api: MakeApi) -> None:
    api = await make_api()
    r = await api.client.get("/v1/configs/models")
    assert (
        await r.read()
        == b'{"models":[{"model_id":"test/model","profiles":["default"],"source":"filesystem"}]}'
    )
    await api.post(model_yaml("b/m", {"z": {"adapter_path": BERT}, "a": {"adapter_path": BERT}}))
    await api.post(model_yaml("B/n"))
    models = (await _json(await api.client.get("/v1/configs/models")))["models"]
    assert [m["model_id"] for m in models] == ["B/n", "b/m", "test/model"]  # code point order
    assert models[1] == {"model_id": "b/m", "profiles": ["a", "z"], "source": "api"}


async def test_get_model_yaml(make_api: MakeApi) -> None:
    api = await make_api()
    r = await api.client.get("/v1/configs/models/test/model")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/x-yaml"
    text = await r.text()
    assert text.startswith("# baseline model, served verbatim\nsie_id: test/model\n")
    r = await api.client.get("/v1/configs/models/TEST/Model")  # lookups are case-insensitive
    assert r.status == 200 and await r.text() == text
    r = await api.client.get("/v1/configs/models/nobody/here")
    assert r.status == 404
    assert await r.read() == (
        b'{"detail":{"error":"model_not_found","model_id":"nobody/here",'
        b'"message":"Model \'nobody/here\' does not exist in the catalog."}}'
    )


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/v1/configs/models/test/model/status", "/status"),
        ("/v1/configs/models/status", "/status"),
        ("/v1/configs/models/", "characters"),
        ("/v1/configs/models/a__b", "__"),
        ("/v1/configs/models/a..b", "invalid characters"),
        ("/v1/configs/models/-lead", "invalid characters"),
    ],
)
async def test_get_invalid_model_id(make_api: MakeApi, path: str, needle: str) -> None:
    api = await make_api()
    r = await api.client.get(path)
    assert r.status == 400
    detail = (await _json(r))["detail"]
    assert detail["error"] == "invalid_model_id" and needle in detail["message"]


# -- POST -----------------------------------------------------------------------------------


async def test_post_create_then_replay_exact_bytes(make_api: MakeApi) -> None:
    api = await make_api()
    r = await api.post(APPENDIX_A)
    assert r.status == 201 and r.headers["Content-Type"] == "application/json"
    assert await r.read() == (
        b'{"model_id":"acme/bert","created_profiles":["default"],"existing_profiles_skipped":[],'
        b'"warnings":[],"routable_bundles_by_profile":{"default":["default"]},"router_id":"standalone"}'
    )
    assert (api.store_dir / "models" / "acme__bert.yaml").is_file()
    assert (api.store_dir / "epoch").read_text() == "1"
    r = await api.post(APPENDIX_A)
    assert r.status == 200
    assert await r.read() == (
        b'{"model_id":"acme/bert","created_profiles":[],"existing_profiles_skipped":["default"],'
        b'"warnings":[],"routable_bundles_by_profile":{},"router_id":"standalone"}'
    )
    assert (await _json(await api.client.get("/v1/configs/epoch")))["epoch"] == 1
    models = (await _json(await api.client.get("/v1/configs/models")))["models"]
    assert {"model_id": "acme/bert", "profiles": ["default"], "source": "api"} in models


async def test_post_json_body_and_profile_order(make_api: MakeApi) -> None:
    api = await make_api()
    body = orjson.dumps(
        {"sie_id": "j/m", "profiles": {"custom": {"adapter_path": BERT}, "default": {"adapter_path": BERT}}}
    )
    r = await api.post(body)
    assert r.status == 201
    out = await _json(r)
    assert out["created_profiles"] == ["custom", "default"]
    assert out["routable_bundles_by_profile"] == {"custom": ["default"], "default": ["default"]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{{invalid yaml", "Invalid YAML: "),
        (b"", "Expected YAML mapping at top level"),
        (b"42", "Expected YAML mapping at top level"),
        (b"- a\n- b\n", "Expected YAML mapping at top level"),
        (b"sie_id: a\xff\n", "not valid UTF-8"),
        (b"sie_id: a\nsie_id: b\n", "duplicate key"),
        (b"a: &x [*x]\n", "Invalid YAML"),
    ],
)
async def test_post_parse_errors(make_api: MakeApi, body: bytes, message: str) -> None:
    api = await make_api()
    r = await api.post(body)
    assert r.status == 400
    detail = (await _json(r))["detail"]
    assert detail["error"] == "parse_error" and message in detail["message"]


@pytest.mark.parametrize(
    "body",
    [
        "sie_id: 123\nprofiles: {}\n",
        "sie_id: [a]\n",
        "sie_id: true\n",
        "sie_id: foo/status\n",
        "sie_id: a__b\n",
        "sie_id: 'bad id'\n",
        'sie_id: "a/b\\n"\n',
        "name: x/../y\n",
    ],
)
async def test_post_invalid_model_id(make_api: MakeApi, body: str) -> None:
    api = await make_api()
    r = await api.post(body)
    assert r.status == 400
    assert (await _json(r))["detail"]["error"] == "invalid_model_id"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            model_yaml("v/m", {"default": {"adapter_path": "some.unknown.module:X"}}),
            "not in any known bundle",
        ),
        ("profiles:\n  default:\n    adapter_path: " + BERT + "\n", "sie_id"),
        ("sie_id: v/m\n", "profiles"),
        ("sie_id: v/m\nprofiles: {}\n", "profile"),
        ("sie_id: v/m\nprofiles:\n  default: 3\n", "default"),
        (model_yaml("v/m", {"default": {"extends": "base"}}), "extends"),
        (
            model_yaml("v/m", {"default": {"adapter_path": BERT, "max_batch_tokens": "many"}}),
            "max_batch_tokens",
        ),
        ("sie_id: v/m\nx: .nan\nprofiles:\n  default:\n    adapter_path: " + BERT + "\n", "finite"),
    ],
)
async def test_post_validation_error(make_api: MakeApi, body: str, needle: str) -> None:
    api = await make_api()
    r = await api.post(body)
    assert r.status == 422
    detail = (await _json(r))["detail"]
    assert detail["error"] == "validation_error"
    assert list(detail) == ["error", "details"]
    assert all(list(d) == ["message"] for d in detail["details"])
    assert any(needle in d["message"] for d in detail["details"]), detail
    assert not list((api.store_dir / "models").iterdir())
    assert (await _json(await api.client.get("/v1/configs/epoch")))["epoch"] == 0


async def test_post_content_conflicts(make_api: MakeApi) -> None:
    api = await make_api()
    assert (await api.post(APPENDIX_A)).status == 201
    r = await api.post(APPENDIX_A.replace("4096", "1"))
    assert r.status == 409
    assert (await _json(r))["detail"] == {
        "error": "content_conflict",
        "model_id": "acme/bert",
        "conflicting_profiles": ["default"],
        "message": (await _json(r))["detail"]["message"],
    }
    append = APPENDIX_A.replace("first", "changed") + "  fast:\n    adapter_path: " + BERT + "\n"
    r = await api.post(append)
    assert r.status == 409
    detail = (await _json(r))["detail"]
    assert detail["conflicting_fields"] == ["description"] and "conflicting_profiles" not in detail
    assert "append-only" in detail["message"]
    # a new top-level field on an append is accepted and kept
    append = (
        APPENDIX_A.replace("first\n", "first\ndefault_bundle: premium\n")
        + "  fast:\n    adapter_path: "
        + BERT
    )
    r = await api.post(append)
    assert r.status == 201 and (await _json(r))["created_profiles"] == ["fast"]
    stored = (api.store_dir / "models" / "acme__bert.yaml").read_text()
    assert "default_bundle: premium" in stored and "description: first" in stored
    assert (await _json(await api.client.get("/v1/configs/epoch")))["epoch"] == 2


async def test_post_case_conflict(make_api: MakeApi) -> None:
    api = await make_api()
    assert (await api.post(model_yaml("acme/bert"))).status == 201
    r = await api.post(model_yaml("Acme/Bert"))
    assert r.status == 409
    detail = (await _json(r))["detail"]
    assert detail["error"] == "model_id_case_conflict"
    assert detail["model_id"] == "Acme/Bert" and detail["existing_model_id"] == "acme/bert"


async def test_appending_to_a_baseline_model_keeps_its_profiles(make_api: MakeApi) -> None:
    api = await make_api()
    body = model_yaml("test/model", {"fast": {"adapter_path": BERT, "max_batch_tokens": 1024}})
    r = await api.post(body)
    assert r.status == 201 and (await _json(r))["created_profiles"] == ["fast"]
    text = await (await api.client.get("/v1/configs/models/test/model")).text()
    assert "default:" in text and "fast:" in text
    stored = (api.store_dir / "models" / "test__model.yaml").read_text()
    assert "default:" in stored and "8192" in stored and "fast:" in stored
    export = await _json(await api.client.get("/v1/configs/export"))
    (entry,) = [m for m in export["models"] if m["model_id"] == "test/model"]
    assert entry["model_config"]["profiles"] == {
        "default": {"adapter_path": BERT, "max_batch_tokens": 8192},
        "fast": {"adapter_path": BERT, "max_batch_tokens": 1024},
    }
    models = (await _json(await api.client.get("/v1/configs/models")))["models"]
    assert models == [{"model_id": "test/model", "profiles": ["default", "fast"], "source": "api"}]


async def test_body_size_limit(make_api: MakeApi) -> None:
    api = await make_api()
    limit = 1_048_576
    base = model_yaml("big/m")
    pad = limit - len(base) - 2
    exact = base + "#" + "x" * pad + "\n"
    assert len(exact) == limit
    r = await api.post(exact)
    assert r.status == 201, await r.text()
    too_big = b"#" * (limit + 1)
    r = await api.post(too_big)
    assert r.status == 413
    assert await r.read() == (
        b'{"detail":{"error":"payload_too_large","message":"Config body exceeds 1048576 bytes limit."}}'
    )

    async def chunks() -> Any:  # no Content-Length: the stream is cut at the limit
        for _ in range(40):
            yield b"#" * 65536

    r = await api.client.post("/v1/configs/models", data=chunks())
    assert r.status == 413
    assert (await _json(r))["detail"]["error"] == "payload_too_large"
    # a declared oversize body is refused before any of it is read
    status, body = await raw_request(
        api, b"POST /v1/configs/models HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"
    )
    assert status == 413 and b"payload_too_large" in body


async def test_store_failure_changes_nothing(make_api: MakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    from sie_operator.store import StoreError

    api = await make_api()
    store = file_store(api.service)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise StoreError("disk full")  # a fault a healthy test filesystem cannot show

    monkeypatch.setattr(store, "commit", broken)
    r = await api.post(APPENDIX_A)
    assert r.status == 503
    detail = (await _json(r))["detail"]
    assert detail["error"] == "store_unavailable" and "disk full" in detail["message"]
    assert (await api.client.get("/v1/configs/models/acme/bert")).status == 404
    assert (await _json(await api.client.get("/v1/configs/epoch")))["epoch"] == 0
    monkeypatch.undo()
    assert (await api.post(APPENDIX_A)).status == 201
    assert (await _json(await api.client.get("/v1/configs/epoch")))["epoch"] == 1


async def test_unexpected_exception_is_a_json_500(
    make_api: MakeApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    api = await make_api()

    def boom() -> Any:
        raise RuntimeError("bug in export")

    monkeypatch.setattr(api.service, "export_snapshot", boom)
    with caplog.at_level(logging.ERROR):
        r = await api.client.get("/v1/configs/export")
    assert r.status == 500
    body = await _json(r)
    assert body["detail"]["error"] == "internal_error"
    assert "Traceback" not in await r.text() and "bug in export" not in await r.text()
    assert "bug in export" in caplog.text
    metrics = (await (await api.client.get("/metrics")).read()).decode()
    assert (
        'sie_config_http_requests_total{method="GET",path="/v1/configs/export",status="500"} 1.0' in metrics
    )


# -- auth -----------------------------------------------------------------------------------


async def test_auth_for_reads_and_writes(make_api: MakeApi) -> None:
    api = await make_api(auth_token=INFER, admin_token=ADMIN)
    c = api.client
    r = await c.get("/v1/configs/models")
    assert r.status == 401 and await r.read() == b'{"detail":"Missing Authorization header"}'
    r = await c.get("/v1/configs/models", headers={"Authorization": "Bearer nope"})
    assert r.status == 403 and await r.read() == b'{"detail":"Invalid token"}'
    for token in (f"Bearer {INFER}", f"Bearer {ADMIN}", INFER, f"Bearer   {ADMIN}  "):
        assert (await c.get("/v1/configs/models", headers={"Authorization": token})).status == 200
    for token in (f"bearer {INFER}", f"Basic {INFER}", "Bearer"):
        assert (await c.get("/v1/configs/epoch", headers={"Authorization": token})).status == 403
    r = await api.post(APPENDIX_A)
    assert r.status == 401
    r = await api.post(APPENDIX_A, token=INFER)
    assert r.status == 403 and await r.read() == b'{"detail":"Admin token required for config mutations"}'
    assert (await api.post(APPENDIX_A, token=ADMIN)).status == 201
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await c.get(path)).status == 200
    # odd bytes in the header are a wrong token, never a 500
    for raw in (b"Bearer \xff\xfe", "Bearer caf\u00e9".encode(), b"\xe2\x98\x83"):
        status, _ = await raw_request(
            api,
            b"GET /v1/configs/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
            + raw
            + b"\r\n\r\n",
        )
        assert status == 403


async def test_write_needs_admin_token_when_only_inference_token_is_set(make_api: MakeApi) -> None:
    api = await make_api(auth_token=INFER)
    r = await api.post(APPENDIX_A)  # checked before the header
    assert r.status == 403
    assert (await _json(r))["detail"] == (
        "Write operations require SIE_ADMIN_TOKEN (inference token is not sufficient)."
    )
    r = await api.client.get("/v1/configs/export", headers={"Authorization": f"Bearer {INFER}"})
    assert r.status == 403 and "SIE_ADMIN_TOKEN" in await r.text()
    assert (await api.client.get("/v1/configs/epoch", headers={"Authorization": INFER})).status == 200


async def test_export_auth(make_api: MakeApi) -> None:
    api = await make_api(admin_token=ADMIN)
    r = await api.client.get("/v1/configs/export")
    assert r.status == 401 and "Missing Authorization header" in await r.text()
    r = await api.client.get("/v1/configs/export", headers={"Authorization": "Bearer wrong"})
    assert r.status == 403
    r = await api.client.get("/v1/configs/export", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status == 200 and "test/model" in await r.text()
    # reads accept the admin token while no inference token is configured
    assert (await api.client.get("/v1/configs/epoch", headers={"Authorization": ADMIN})).status == 200


async def test_empty_tokens_fail_closed(make_api: MakeApi) -> None:
    api = await make_api(auth_token="", admin_token="")
    assert (await api.client.get("/v1/configs/models")).status == 401
    assert (await api.client.get("/v1/configs/models", headers={"Authorization": "x"})).status == 403
    assert (await api.post(APPENDIX_A)).status == 401
    assert (await api.post(APPENDIX_A, token="anything")).status == 403


async def test_open_when_no_token_is_configured(make_api: MakeApi) -> None:
    api = await make_api()
    assert (
        await api.client.get("/v1/configs/export", headers={"Authorization": "Bearer junk"})
    ).status == 200
    assert (await api.post(APPENDIX_A, token="junk")).status == 201


# -- resolve --------------------------------------------------------------------------------


async def test_resolve(make_api: MakeApi) -> None:
    api = await make_api()
    two = model_yaml("two/m", {"default": {"adapter_path": BERT}, "sg": {"adapter_path": SGLANG}})
    assert (await api.post(two)).status == 201
    c = api.client
    r = await c.post("/v1/configs/resolve", data=b'{"model":"TWO/M"}')
    assert r.status == 200
    assert await r.read() == (
        b'{"model":"TWO/M","resolved_bundle":"default","compatible_bundles":["default","sglang"],'
        b'"profiles":["default","sg"]}'
    )
    r = await c.post("/v1/configs/resolve", data=b'{"model":"SGLANG:/two/m"}')
    assert (await _json(r))["resolved_bundle"] == "sglang"
    r = await c.post("/v1/configs/resolve", data=b'{"model":"two/m","bundle":"sglang"}')
    assert (await _json(r))["resolved_bundle"] == "sglang"
    r = await c.post("/v1/configs/resolve", data=b'{"model":"test/model","bundle":"sglang"}')
    assert r.status == 409
    assert (await _json(r))["detail"] == {
        "error": "bundle_conflict",
        "model": "test/model",
        "bundle": "sglang",
        "compatible_bundles": ["default"],
        "message": "Bundle 'sglang' does not support model 'test/model'. Compatible bundles: ['default']",
    }
    r = await c.post("/v1/configs/resolve", data=b'{"model":"no/such"}')
    assert r.status == 404
    assert (await _json(r))["detail"] == {
        "error": "model_not_found",
        "model": "no/such",
        "message": "Model not found: no/such",
    }


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{bad", 400, "parse_error"),
        (b"\xff", 400, "parse_error"),
        (b"[1]", 400, "parse_error"),
        (b'"x"', 400, "parse_error"),
        (b"", 400, "missing_field"),
        (b"{}", 400, "missing_field"),
        (b'{"model":""}', 400, "missing_field"),
        (b'{"model":123}', 400, "invalid_model_spec"),
        (b'{"model":["a"]}', 400, "invalid_model_spec"),
        (b'{"model":"   "}', 400, "invalid_model_spec"),
        (b'{"model":":/x"}', 400, "invalid_model_spec"),
        (b'{"model":"b:/"}', 400, "invalid_model_spec"),
        (b'{"model":"test/model","bundle":7}', 400, "invalid_model_spec"),
        (b'{"model":"test/model","bundle":""}', 409, "bundle_conflict"),
        (b'{"model":"test/model","bundle":"DEFAULT"}', 409, "bundle_conflict"),
    ],
)
async def test_resolve_errors(make_api: MakeApi, body: bytes, status: int, error: str) -> None:
    api = await make_api()
    r = await api.client.post("/v1/configs/resolve", data=body)
    assert r.status == status
    assert (await _json(r))["detail"]["error"] == error


# -- bundles, epoch, export -----------------------------------------------------------------


async def test_bundles(make_api: MakeApi) -> None:
    api = await make_api()
    r = await api.client.get("/v1/configs/bundles")
    assert await r.read() == (
        b'{"bundles":[{"bundle_id":"default","priority":10,"adapter_count":1,"source":"filesystem"},'
        b'{"bundle_id":"sglang","priority":20,"adapter_count":1,"source":"filesystem"}]}'
    )
    r = await api.client.get("/v1/configs/bundles/default")
    assert r.status == 200 and r.headers["Content-Type"] == "application/x-yaml"
    assert (
        await r.text()
        == "adapters:\n- sie_server.adapters.bert_flash\nname: default\npriority: 10\nsource: filesystem\n"
    )
    r = await api.client.get("/v1/configs/bundles/Default")
    assert (
        r.status == 404 and await r.read() == b'{"detail":{"error":"bundle_not_found","bundle_id":"Default"}}'
    )


async def test_epoch(make_api: MakeApi) -> None:
    api = await make_api()
    expected_hash = bundles_hash(
        [("default", 10, ["sie_server.adapters.bert_flash"]), ("sglang", 20, ["sie_server.adapters.sglang"])]
    )
    r = await api.client.get("/v1/configs/epoch")
    assert await r.read() == b'{"epoch":0,"bundles_hash":"' + expected_hash.encode() + b'"}'
    assert re.fullmatch(r"[0-9a-f]{64}", expected_hash)
    for i in range(5):
        assert (await api.post(model_yaml(f"seq/m{i}"))).status == 201
    assert (await _json(await api.client.get("/v1/configs/epoch")))["epoch"] == 5


async def test_export(make_api: MakeApi) -> None:
    api = await make_api()
    r = await api.client.get("/v1/configs/export")
    snap = await _json(r)
    assert list(snap) == ["snapshot_version", "epoch", "generated_at", "models"]
    assert snap["snapshot_version"] == 1 and snap["epoch"] == 0
    generated = dt.datetime.fromisoformat(snap["generated_at"])
    assert generated.utcoffset() == dt.timedelta(0)
    (baseline,) = snap["models"]
    assert list(baseline) == ["model_id", "model_config", "raw_yaml", "affected_bundles"]
    assert baseline["raw_yaml"].startswith("# baseline model")  # filesystem models verbatim
    assert baseline["affected_bundles"] == ["default"]
    assert (await api.post(APPENDIX_A)).status == 201
    snap = await _json(await api.client.get("/v1/configs/export"))
    assert snap["epoch"] == 1
    (entry,) = [m for m in snap["models"] if m["model_id"] == "acme/bert"]
    assert entry["model_config"]["sie_id"] == "acme/bert"
    assert entry["model_config"]["profiles"]["default"]["max_batch_tokens"] == 4096
    assert entry["raw_yaml"] == (api.store_dir / "models" / "acme__bert.yaml").read_text()


async def test_empty_catalog_export(make_api: MakeApi, tmp_path: Any) -> None:
    empty = tmp_path / "empty-models"
    empty.mkdir()
    api = await make_api(models_dir=empty)
    snap = await _json(await api.client.get("/v1/configs/export"))
    assert snap["models"] == [] and snap["epoch"] == 0


# -- metrics --------------------------------------------------------------------------------


async def test_metrics(make_api: MakeApi) -> None:
    api = await make_api()

    async def scrape() -> str:
        r = await api.client.get("/metrics")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return (await r.read()).decode()

    text = await scrape()
    for name in (
        "sie_config_http_requests_total",
        "sie_config_http_request_duration_seconds",
        "sie_config_epoch",
        "sie_config_models_total",
        "sie_config_nats_connected",
        "sie_config_nats_publishes_total",
        "sie_config_store_writes_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'sie_config_models_total{source="filesystem"} 1.0' in text
    assert "sie_config_epoch 0.0" in text
    await api.client.get("/v1/configs/models")
    await api.client.get("/v1/configs/models/test/model")
    await api.client.get("/nope/1")
    await api.client.get("/nope/2")
    assert (await api.post(APPENDIX_A)).status == 201
    text = await scrape()
    assert 'path="/metrics"' not in text
    assert 'sie_config_http_requests_total{method="GET",path="/v1/configs/models",status="200"} 1.0' in text
    assert 'path="/v1/configs/models/{model_id:path}",status="200"} 1.0' in text
    assert 'sie_config_http_requests_total{method="GET",path="<unmatched>",status="404"} 2.0' in text
    assert "sie_config_epoch 1.0" in text
    assert 'sie_config_models_total{source="api"} 1.0' in text
    assert 'sie_config_store_writes_total{op="write_model",result="success"} 1.0' in text
    assert 'sie_config_store_writes_total{op="increment_epoch",result="success"} 1.0' in text
    assert "sie_config_nats_connected 0.0" in text


def test_metrics_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.epoch.set(5)
    assert b"sie_config_epoch 5.0" in a.exposition()
    assert b"sie_config_epoch 0.0" in b.exposition()
