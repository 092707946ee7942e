"""The chart's container args and env, fed to the real CLI parsers and settings loaders.

Why: the chart and the CLI are written separately; a renamed flag or a variable the process
does not read would only show as a CrashLoopBackOff in a cluster. Here each rendered
container command line is parsed by ``sie-operator``'s own parser and its environment is
resolved by each component's own settings code, with the kubelet's substitutions applied.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

import pytest
from chartlib import CHART, FULLNAME, NAMESPACE, REPO, Obj, args, container, env, find, load_yaml, one, render

from sie_operator.cli import build_parser
from sie_operator.configsvc.command import settings_from_args
from sie_operator.controller.command import advertise_url
from sie_operator.gateway.settings import from_args as gateway_settings
from sie_operator.protocol.deltas import is_trusted, parse_producer_list

POD = "pod-7d4b9"
FIELDS = {"metadata.name": POD, "metadata.namespace": NAMESPACE, "status.podIP": "10.0.0.7"}
ALL_VALUES = load_yaml(CHART / "ci" / "all-values.yaml")
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "cluster-wide": {"rbac.clusterWide": True},
    "workers": {"workers.enabled": True, "workers.bundles": {"default": 1, "sglang": 1}},
    "all": dict(ALL_VALUES),
    "producer": {"operator.producerId": "acme-config", "workers.enabled": True},
}


def kubelet_env(c: Obj) -> dict[str, str]:
    """Env as the container sees it: downward API and Secrets filled in, $(VAR) expanded."""
    out: dict[str, str] = {}
    for name, value in env(c).items():
        if isinstance(value, dict):
            if "fieldRef" in value:
                path = value["fieldRef"]["fieldPath"]
                value = FIELDS.get(path, "node-1")
            else:
                ref = value.get("secretKeyRef") or value.get("configMapKeyRef") or {}
                value = f"from-{ref.get('name')}-{ref.get('key')}"
        out[name] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m.group(1), m.group(0)), value)
    return out


def kubelet_args(c: Obj, environ: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\((\w+)\)", lambda m: environ.get(m.group(1), m.group(0)), a) for a in args(c)]


def parse(c: Obj) -> tuple[argparse.Namespace, dict[str, str]]:
    environ = kubelet_env(c)
    ns = build_parser().parse_args(kubelet_args(c, environ))
    return ns, environ


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_operator_command_line_and_env(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sie_operator.controller.command import _resolve

    objs = render(CONFIGS[config])
    ns, environ = parse(container(one(objs, "Deployment", FULLNAME)))
    assert ns.command == "run"
    settings = settings_from_args(ns, environ)
    assert settings.port == 8080 and settings.host == "0.0.0.0"
    assert settings.store_dir == Path("/var/lib/sie-operator")
    assert settings.restore is True
    if "SIE_NATS_URL" in environ:
        assert settings.nats_url == environ["SIE_NATS_URL"]
    for var in list(os.environ):
        if var.startswith(("SIE_", "POD_")):
            monkeypatch.delenv(var)
    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    opts = _resolve(ns)
    assert opts["gateway_service"] == f"{FULLNAME}-gateway-headless"
    assert opts["gateway_namespace"] == NAMESPACE
    assert opts["all_namespaces"] == (config == "cluster-wide")
    if config != "cluster-wide":
        assert opts["namespaces"] == (ALL_VALUES["watchNamespaces"] if config == "all" else [NAMESPACE])
    # every component that receives deltas trusts what the operator publishes
    producer = settings.producer_id
    assert POD in producer
    receivers = [
        container(one(objs, "Deployment", f"{FULLNAME}-gateway")),
        *map(container, find(objs, "StatefulSet")),
    ]
    for c in receivers:
        trusted = parse_producer_list(kubelet_env(c).get("SIE_NATS_CONFIG_TRUSTED_PRODUCERS"))
        assert is_trusted(producer, trusted), (c["name"], producer, trusted)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_gateway_command_line_and_env(config: str) -> None:
    objs = render(CONFIGS[config])
    ns, environ = parse(container(one(objs, "Deployment", f"{FULLNAME}-gateway")))
    assert ns.command == "gateway"
    s: Any = gateway_settings(ns, environ)
    assert s.config_url == f"http://{FULLNAME}.{NAMESPACE}.svc:8080"
    assert s.kubernetes is True and s.k8s_namespace == NAMESPACE
    assert s.k8s_service == f"{FULLNAME}-worker" and s.k8s_port == 8080
    assert s.gateway_id == POD and s.port == 8080
    assert s.auth.enabled  # auth is on by default
    # the gateway bootstraps with the export token and never holds the admin token
    assert s.export_token and s.admin_token is None
    assert s.nats_auth.user and s.nats_auth.password


@pytest.mark.parametrize("config", ["workers", "all", "producer"])
def test_worker_command_line(config: str) -> None:
    objs = render(CONFIGS[config])
    for sts in find(objs, "StatefulSet"):
        ns, _ = parse(container(sts))
        assert ns.command == "worker"
        assert ns.name == POD and ns.bundle == sts["metadata"]["labels"]["sie.dev/bundle"]
        assert ns.config_url == f"http://{FULLNAME}.{NAMESPACE}.svc:8080"


def test_image_user_matches_the_chart() -> None:
    """The Dockerfile's user is the uid the chart's pods run as (fsGroup owns the store)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert 'ENTRYPOINT ["sie-operator"]' in dockerfile
    for obj in render(dict(ALL_VALUES)):
        if obj["kind"] in ("Deployment", "StatefulSet") and not obj["metadata"]["name"].endswith("-nats"):
            ctx = obj["spec"]["template"]["spec"]["securityContext"]
            assert ctx["runAsUser"] == ctx["runAsGroup"] == ctx["fsGroup"] == 10001


HA_CONFIGS: dict[str, dict[str, Any]] = {
    "ha": {"ha.enabled": True, "workers.enabled": True},
    "ha-external-creds": {
        "ha.enabled": True,
        "workers.enabled": True,
        "nats.external.url": "nats://nats.nats.svc:4222",
        "nats.external.credsSecret.name": "sie-nats-creds",
    },
}


@pytest.mark.parametrize("config", sorted(HA_CONFIGS))
def test_ha_gateway_and_worker_command_lines(config: str, tmp_path: Path) -> None:
    objs = render(HA_CONFIGS[config])
    ns, environ = parse(container(one(objs, "Deployment", f"{FULLNAME}-gateway")))
    if config == "ha-external-creds":
        assert environ["SIE_NATS_CREDS"] == "/etc/sie/nats/nats.creds"  # the mounted Secret
        creds = tmp_path / "nats.creds"
        creds.write_text("-----BEGIN NATS USER JWT-----\n")
        environ["SIE_NATS_CREDS"] = str(creds)  # the loader checks the file is readable
    s: Any = gateway_settings(ns, environ)
    assert s.config_url == f"http://{FULLNAME}.{NAMESPACE}.svc:8080"
    if config == "ha-external-creds":
        assert s.nats_auth.creds_file == environ["SIE_NATS_CREDS"] and not s.nats_auth.user
    for sts in find(objs, "StatefulSet"):
        ns, environ = parse(container(sts))
        assert ns.command == "worker" and ns.config_url == f"http://{FULLNAME}.{NAMESPACE}.svc:8080"


@pytest.mark.parametrize("config", sorted(HA_CONFIGS))
def test_ha_operator_command_line(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The HA flags and variables (--leader-election*, POD_IP for the advertised URL, a
    jetstream:// store) as `sie-operator run` parses and resolves them."""
    c = container(one(render(HA_CONFIGS[config]), "Deployment", FULLNAME))
    environ = kubelet_env(c)
    assert environ["SIE_CONFIG_STORE_DIR"] == "jetstream://sie-config"
    assert environ["SIE_CONFIG_STORE_REPLICAS"] == ("1" if config == "ha" else "3")
    ns = build_parser().parse_args(kubelet_args(c, environ))
    assert ns.command == "run" and ns.leader_election
    assert ns.leader_election_id == FULLNAME and ns.leader_election_namespace == NAMESPACE
    port = int(ns.port)
    assert advertise_url(ns.advertise_url, environ, port) == "http://10.0.0.7:8080"
    assert advertise_url(ns.advertise_url, {**environ, "POD_IP": "fd00::7"}, port) == "http://[fd00::7]:8080"
    if config == "ha":  # (the external one would need its .creds file)
        settings = settings_from_args(ns, environ)  # a jetstream:// store with the release's NATS URL
        assert settings.store_stream == "sie-config"
