"""Auth in the rendered chart: on by default, least credential per pod, NATS with a login.

Why: a chart whose defaults leave the Config API writable by any pod (and NATS open to any
delta injector) is insecure in every install that does not read the docs. These tests read
what `helm template` renders with default and other values: auth is on, no admin token
reaches a gateway or worker pod, NATS requires a login (proved by running the rendered
nats-server configuration), no credential is in argv, and there is no unauthenticated
write path. That the generated Secret survives `helm upgrade` is shown against a real API
server in test_chart_k8s.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from pathlib import Path
from typing import Any

import nats
import pytest
from chartlib import (
    CHART,
    FULLNAME,
    NAMESPACE,
    Obj,
    container,
    env,
    find,
    helm,
    load_yaml,
    one,
    pod_templates,
    render,
)

from sie_operator.cli import build_parser
from sie_operator.configsvc.auth import Authenticator
from sie_operator.configsvc.command import settings_from_args
from sie_operator.devcluster.natsserver import NatsServer

AUTH_SECRET = f"{FULLNAME}-auth"
NATS = f"{FULLNAME}-nats"
NATS_SECRET = NATS
ALL_VALUES = load_yaml(CHART / "ci" / "all-values.yaml")
WORKERS = {"workers.enabled": True, "workers.bundles": {"default": 1, "sglang": 1}}

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "workers": WORKERS,
    "existing-secret": {"auth.existingSecret": "my-tokens", **WORKERS},
    "per-token": {
        "auth.adminToken.existingSecret": "a",
        "auth.authToken.existingSecret": "b",
        "auth.exportToken.existingSecret": "c",
        "auth.exportToken.key": "exp",
        **WORKERS,
    },
    "external-nats": {
        "nats.external.url": "nats://nats.nats-system.svc:4222",
        "nats.external.existingSecret": "ext-nats",
        **WORKERS,
    },
    "network-policy": {"networkPolicy.enabled": True, **WORKERS},
    "all": dict(ALL_VALUES),
}


def secret_data(objs: list[Obj], name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in one(objs, "Secret", name)["data"].items()}


def refs(c: Obj) -> dict[str, tuple[str, str]]:
    """env name -> (secret, key) for every secretKeyRef."""
    out = {}
    for name, value in env(c).items():
        if isinstance(value, dict) and "secretKeyRef" in value:
            out[name] = (value["secretKeyRef"]["name"], value["secretKeyRef"]["key"])
    return out


def admin_ref(objs: list[Obj]) -> tuple[str, str]:
    return refs(container(one(objs, "Deployment", FULLNAME)))["SIE_ADMIN_TOKEN"]


def component(workload: Obj) -> str:
    return str(workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


# --------------------------------------------------------------------------- defaults


def test_default_values_have_auth_on_with_random_tokens() -> None:
    objs = render()
    tokens = secret_data(objs, AUTH_SECRET)
    assert sorted(tokens) == ["SIE_ADMIN_TOKEN", "SIE_AUTH_TOKEN", "SIE_EXPORT_TOKEN"]
    for value in tokens.values():
        assert re.fullmatch(r"[A-Za-z0-9]{48}", value), value
    assert len(set(tokens.values())) == 3
    # a fresh render (no cluster to look the Secret up in) draws new random tokens
    again = secret_data(render({"gateway.replicas": 3}), AUTH_SECRET)
    assert again["SIE_ADMIN_TOKEN"] != tokens["SIE_ADMIN_TOKEN"]
    op = refs(container(one(objs, "Deployment", FULLNAME)))
    assert op["SIE_ADMIN_TOKEN"] == (AUTH_SECRET, "SIE_ADMIN_TOKEN")
    assert op["SIE_AUTH_TOKEN"] == (AUTH_SECRET, "SIE_AUTH_TOKEN")
    assert op["SIE_EXPORT_TOKEN"] == (AUTH_SECRET, "SIE_EXPORT_TOKEN")
    assert op["SIE_GATEWAY_TOKEN"] == (AUTH_SECRET, "SIE_AUTH_TOKEN")
    gw = container(one(objs, "Deployment", f"{FULLNAME}-gateway"))
    assert env(gw)["SIE_AUTH_MODE"] == "token"
    assert refs(gw)["SIE_EXPORT_TOKEN"] == (AUTH_SECRET, "SIE_EXPORT_TOKEN")


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_no_admin_token_reaches_gateway_or_worker_pods(config: str) -> None:
    objs = render(CONFIGS[config])
    admin = admin_ref(objs)
    checked = 0
    for workload, tpl in pod_templates(objs):
        if component(workload) == "operator":
            continue
        checked += 1
        for c in tpl["spec"]["containers"] + tpl["spec"].get("initContainers", []):
            assert "SIE_ADMIN_TOKEN" not in env(c), workload["metadata"]["name"]
            assert admin not in refs(c).values(), workload["metadata"]["name"]
            assert not c.get("envFrom"), workload["metadata"]["name"]
        for v in tpl["spec"].get("volumes") or []:
            assert "secret" not in v and "projected" not in v, (workload["metadata"]["name"], v)
    assert checked >= (3 if "workers.enabled" in CONFIGS[config] or config == "all" else 2)
    # workers get the export token and nothing more
    for sts in find(objs, "StatefulSet"):
        token_vars = {n for n in env(container(sts)) if "TOKEN" in n}
        assert token_vars == {"SIE_EXPORT_TOKEN"}, token_vars


def test_no_unauthenticated_write_path() -> None:
    """The operator's Config API, as configured by the rendered env, refuses a write
    without a token; opening it takes an explicit auth.enabled=false."""

    def write_auth(objs: list[Obj]) -> Authenticator:
        c = container(one(objs, "Deployment", FULLNAME))
        environ = {n: v if isinstance(v, str) else "secret-value" for n, v in env(c).items()}
        args = build_parser().parse_args([a.replace("$(POD_NAME)", "op-0") for a in c["args"]])
        s = settings_from_args(args, environ)
        return Authenticator(s.auth_token, s.admin_token, s.export_token)

    auth = write_auth(render())
    assert auth.check_write(None) is not None and auth.check_write(None).status == 401  # type: ignore[union-attr]
    assert auth.check_export(None) is not None
    # the gateway has no admin token, so its admin routes refuse every caller
    gw = env(container(one(render(), "Deployment", f"{FULLNAME}-gateway")))
    assert "SIE_ADMIN_TOKEN" not in gw and gw["SIE_AUTH_MODE"] == "token"
    # opting out is explicit
    assert write_auth(render({"auth.enabled": False})).check_write(None) is None


def test_auth_opt_out_needs_enabled_false() -> None:
    objs = render({"auth.enabled": False})
    assert not find(objs, "Secret", AUTH_SECRET)
    for _, tpl in pod_templates(objs):
        for c in tpl["spec"]["containers"]:
            assert not {n for n in env(c) if "TOKEN" in n}, c["name"]
    assert env(container(one(objs, "Deployment", f"{FULLNAME}-gateway")))["SIE_AUTH_MODE"] == "none"
    # (the NOTES warning is checked by the real install in test_chart_k8s.py)


def test_existing_secret_replaces_the_generated_one() -> None:
    objs = render(CONFIGS["existing-secret"])
    assert not find(objs, "Secret", AUTH_SECRET)
    op = refs(container(one(objs, "Deployment", FULLNAME)))
    assert {op[k] for k in ("SIE_ADMIN_TOKEN", "SIE_AUTH_TOKEN", "SIE_EXPORT_TOKEN")} == {
        ("my-tokens", "SIE_ADMIN_TOKEN"),
        ("my-tokens", "SIE_AUTH_TOKEN"),
        ("my-tokens", "SIE_EXPORT_TOKEN"),
    }
    objs = render(CONFIGS["per-token"])
    assert find(objs, "Secret", AUTH_SECRET)  # still generated (for nothing that is used)
    for sts in find(objs, "StatefulSet"):
        assert refs(container(sts))["SIE_EXPORT_TOKEN"] == ("c", "exp")


def test_admin_token_without_export_token_is_refused() -> None:
    res = helm(
        "template",
        "x",
        str(CHART),
        "--set",
        "auth.enabled=false",
        "--set",
        "auth.adminToken.existingSecret=adm",
        check=False,
    )
    assert res.returncode != 0 and "export token" in res.stderr


# --------------------------------------------------------------------------- NATS


@pytest.mark.parametrize("config", ["default", "workers", "network-policy", "all"])
def test_builtin_nats_requires_a_login_from_a_secret(config: str) -> None:
    objs = render(CONFIGS[config])
    secret = "sie-nats" if config == "all" else NATS_SECRET
    nats_c = container(one(objs, "Deployment", NATS))
    assert refs(nats_c)["SIE_NATS_USER"] == (secret, "SIE_NATS_USER")
    assert refs(nats_c)["SIE_NATS_PASSWORD"] == (secret, "SIE_NATS_PASSWORD")
    conf = one(objs, "ConfigMap", f"{NATS}-config")["data"]["nats.conf"]
    assert "authorization" in conf and "$SIE_NATS_PASSWORD" in conf
    assert "--config=/etc/nats/nats.conf" in nats_c["args"]
    # every component logs in with the same Secret
    for workload, _ in pod_templates(objs):
        if component(workload) == "nats":
            continue
        r = refs(container(workload))
        assert r["SIE_NATS_USER"] == (secret, "SIE_NATS_USER"), workload["metadata"]["name"]
        assert r["SIE_NATS_PASSWORD"] == (secret, "SIE_NATS_PASSWORD"), workload["metadata"]["name"]


def test_external_nats_credentials_come_from_a_secret_never_the_url() -> None:
    objs = render(CONFIGS["external-nats"])
    assert not find(objs, "Deployment", NATS) and not find(objs, "Secret", NATS_SECRET)
    for workload, _ in pod_templates(objs):
        assert refs(container(workload))["SIE_NATS_PASSWORD"] == ("ext-nats", "SIE_NATS_PASSWORD")
    res = helm("template", "x", str(CHART), "--set", "nats.external.url=nats://u:pw@nats:4222", check=False)
    assert res.returncode != 0 and "external/url" in res.stderr


async def test_rendered_nats_configuration_refuses_anonymous_clients(tmp_path: Path) -> None:
    """Run the real nats-server with the chart's nats.conf and the generated Secret's
    values in its environment: no login, no connection; the Secret's login works."""
    objs = render()
    conf = tmp_path / "nats.conf"
    conf.write_text(one(objs, "ConfigMap", f"{NATS}-config")["data"]["nats.conf"])
    creds = secret_data(objs, NATS_SECRET)
    assert creds["SIE_NATS_USER"] and len(creds["SIE_NATS_PASSWORD"]) >= 32
    saved = {k: os.environ.get(k) for k in creds}
    os.environ.update(creds)  # nats-server reads $SIE_NATS_USER/$SIE_NATS_PASSWORD at start
    try:
        server = NatsServer(log_dir=tmp_path / "log", extra_args=["-c", str(conf), "-m", "0"]).start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        url = f"nats://127.0.0.1:{server.port}"
        with pytest.raises(Exception, match="Authorization"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)
        nc = await nats.connect(
            url,
            user=creds["SIE_NATS_USER"],
            password=creds["SIE_NATS_PASSWORD"],
            allow_reconnect=False,
            connect_timeout=3,
        )
        await nc.publish("sie.config.models._all", b"{}")
        await asyncio.wait_for(nc.flush(), 3)
        await nc.close()
    finally:
        server.stop()


# --------------------------------------------------------------------------- argv hygiene


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_no_credential_in_argv_or_literal_env(config: str) -> None:
    objs = render(CONFIGS[config])
    secrets = [
        v
        for o in find(objs, "Secret")
        for v in (base64.b64decode(x).decode() for x in o.get("data", {}).values())
        if len(v) >= 8
    ]
    for workload, tpl in pod_templates(objs):
        for c in tpl["spec"]["containers"]:
            argv = [*(c.get("command") or []), *(c.get("args") or [])]
            for a in argv:
                a = str(a)
                assert not re.search(r"--(admin|export)-token|--nats-(user|password)", a), a
                assert not re.search(r"://[^/@\s]+@", a), a  # no userinfo in a URL
                assert not any(s in a for s in secrets), workload["metadata"]["name"]
            for name, value in env(c).items():
                if re.search(r"TOKEN|PASSWORD|SECRET|CREDS", name) and name != "SIE_AUTH_MODE":
                    assert isinstance(value, dict), (workload["metadata"]["name"], name)
                if isinstance(value, str):
                    assert not re.search(r"://[^/@\s]+@", value), (name, value)


# --------------------------------------------------------------------------- NetworkPolicy


def _peer_selects(peer: Obj, labels: dict[str, str]) -> bool:
    sel = peer.get("podSelector")
    if sel is None:
        return False
    if any(labels.get(k) != v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for expr in sel.get("matchExpressions") or []:
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_network_policies_are_off_by_default() -> None:
    assert not find(render(), "NetworkPolicy")


def test_network_policies_admit_only_operator_gateways_and_workers() -> None:
    objs = render(CONFIGS["network-policy"])
    pods = {workload["metadata"]["name"]: tpl["metadata"]["labels"] for workload, tpl in pod_templates(objs)}
    stranger = {**next(iter(pods.values())), "app.kubernetes.io/component": "debug-shell"}
    other_release = {**next(iter(pods.values())), "app.kubernetes.io/instance": "other"}
    for name, target, port in ((NATS, "nats", 4222), (FULLNAME, "operator", 8080)):
        pol = one(objs, "NetworkPolicy", name)
        assert pol["spec"]["policyTypes"] == ["Ingress"]
        sel = pol["spec"]["podSelector"]["matchLabels"]
        protected = [n for n, labels in pods.items() if all(labels.get(k) == v for k, v in sel.items())]
        assert [pods[n]["app.kubernetes.io/component"] for n in protected] == [target]
        (rule,) = pol["spec"]["ingress"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        admitted = sorted(
            labels["app.kubernetes.io/component"]
            for labels in pods.values()
            if any(_peer_selects(p, labels) for p in rule["from"])
        )
        assert admitted == ["gateway", "operator", "worker", "worker"], admitted
        assert not any(_peer_selects(p, stranger) for p in rule["from"])
        assert not any(_peer_selects(p, other_release) for p in rule["from"])
    objs = render(
        {"networkPolicy.enabled": True, "networkPolicy.extraIngressNamespaceLabels": {"team": "obs"}}
    )
    peers = one(objs, "NetworkPolicy", FULLNAME)["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"team": "obs"}}} in peers
    assert one(objs, "NetworkPolicy", FULLNAME)["metadata"]["namespace"] == NAMESPACE
