"""Helpers for the chart tests: run the real `helm` and look at what it rendered.

Why the real binary: the chart's behaviour (template functions, schema validation, lint
rules) is Helm's, so only Helm can say what users will get.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from sie_operator.devcluster.controlplane import BinaryNotFoundError, find_binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sie-operator"
RELEASE = "sie"
NAMESPACE = "sie-system"
FULLNAME = f"{RELEASE}-sie-operator"

Obj = dict[str, Any]


@functools.cache
def helm_bin() -> str:
    """The pinned helm from ensure-bins (or $PATH); tests skip without it."""
    try:
        return str(find_binary("helm", allow_path=True))
    except BinaryNotFoundError as exc:
        pytest.skip(f"helm not available: {exc}")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    return res


def _set_args(values: Mapping[str, Any] | None) -> list[str]:
    """Values as --set-json (exact types, no string coercion)."""
    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


@functools.cache
def _render_cached(key: str, release: str, namespace: str, include_crds: bool) -> str:
    values = json.loads(key)
    argv = ["template", release, str(CHART), "--namespace", namespace, *_set_args(values)]
    if include_crds:
        argv.append("--include-crds")
    return helm(*argv).stdout


def render_text(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    include_crds: bool = False,
) -> str:
    key = json.dumps(values or {}, sort_keys=True)
    return _render_cached(key, release, namespace, include_crds)


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    include_crds: bool = False,
) -> list[Obj]:
    """`helm template` with dotted-key values (e.g. {"workers.enabled": True}) -> objects."""
    text = render_text(values, release=release, namespace=namespace, include_crds=include_crds)
    return [d for d in yaml.safe_load_all(text) if d]


def find(objs: Iterable[Obj], kind: str, name: str | None = None, namespace: str | None = None) -> list[Obj]:
    return [
        o
        for o in objs
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]


def one(objs: Iterable[Obj], kind: str, name: str, namespace: str | None = None) -> Obj:
    found = find(objs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind}/{name}, got {len(found)}: {names(objs)}"
    return found[0]


def names(objs: Iterable[Obj]) -> list[str]:
    return sorted(f"{o['kind']}/{o['metadata'].get('namespace', '-')}/{o['metadata']['name']}" for o in objs)


def pod_templates(objs: Iterable[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, pod template) for every Deployment/StatefulSet/DaemonSet/Job."""
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield o, o["spec"]["template"]


def container(workload: Obj, name: str | None = None) -> Obj:
    cs = workload["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(cs) == 1
        return dict(cs[0])
    return dict(next(c for c in cs if c["name"] == name))


def env(c: Obj) -> dict[str, Any]:
    """name -> value (str) or valueFrom (dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env") or []}


def args(c: Obj) -> list[str]:
    return [str(a) for a in c.get("args") or []]


def flag(c: Obj, name: str) -> list[str]:
    """Values of --name=value arguments."""
    prefix = f"--{name}="
    return [a[len(prefix) :] for a in args(c) if a.startswith(prefix)]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
