"""The Argo CD health check (examples/argocd/health.lua) run as Argo CD runs it.

Why a real Lua runtime: Argo CD executes the script in gopher-lua (Lua 5.1) with only the
base, table and (safe) os libraries, after its own "deletion pending" check; a script that
works in a full Lua but calls ``string.find`` fails there as Unknown health. lupa's Lua 5.1
with the other libraries removed is the closest stand-in we can run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from gitops_objects import Case, computed_cases, fixture_cases

lupa = pytest.importorskip("lupa")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "argocd"
SCRIPT = (EXAMPLES / "health.lua").read_text()
VALID = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
# What Argo CD does NOT open for custom health scripts (useOpenLibs false).
CLOSED_LIBS = ("string", "io", "math", "coroutine", "debug", "utf8", "bit", "jit", "os", "dofile", "loadfile")


def _lua_module() -> Any:
    try:
        from lupa import lua51  # gopher-lua implements Lua 5.1

        return lua51
    except ImportError:
        return lupa


LUA = _lua_module()


def _to_lua(lua: Any, value: Any) -> Any:
    """JSON -> Lua the way Argo CD's decodeValue does (arrays 1-based, null = absent)."""
    if isinstance(value, dict):
        t = lua.table()
        for k, v in value.items():
            if v is not None:
                t[k] = _to_lua(lua, v)
        return t
    if isinstance(value, list):
        t = lua.table()
        for i, v in enumerate(value, start=1):
            t[i] = _to_lua(lua, v)
        return t
    return value


def argocd_health(obj: dict[str, Any], script: str = SCRIPT) -> dict[str, str]:
    """gitops-engine's GetResourceHealth: deletion first, then the custom Lua."""
    if obj["metadata"].get("deletionTimestamp"):
        return {"status": "Progressing", "message": "Pending deletion"}
    lua = LUA.LuaRuntime(register_eval=False, register_builtins=False)
    g = lua.globals()
    for name in CLOSED_LIBS:
        g[name] = None
    g.obj = _to_lua(lua, obj)
    result = lua.execute(script)
    assert LUA.lua_type(result) == "table", "the script must return a table"
    out = {str(k): str(v) for k, v in result.items()}
    assert out.get("status") in VALID, out
    return out


CASES = computed_cases()
FIXTURES = fixture_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_health_of_operator_statuses(case: Case) -> None:
    health = argocd_health(case.obj)
    assert health["status"] == case.argocd, health
    assert case.argocd_message in health["message"], health


@pytest.mark.parametrize("case", FIXTURES, ids=[c.name for c in FIXTURES])
def test_health_of_captured_objects(case: Case) -> None:
    health = argocd_health(case.obj)
    assert health["status"] == case.argocd, (case.notes, health)
    assert case.argocd_message in health["message"], health


def test_every_health_outcome_is_covered() -> None:
    seen = {c.argocd for c in CASES + FIXTURES}
    assert {"Healthy", "Progressing", "Degraded"} <= seen


def test_uses_no_library_argo_cd_does_not_open() -> None:
    """A string-library call would only fail at run time on a path not taken; check the text."""
    code = "\n".join(line.split("--", 1)[0] for line in SCRIPT.splitlines())
    for lib in CLOSED_LIBS:
        assert not re.search(rf"(?<![\w.]){lib}\s*[.(]", code), lib
    assert not re.search(r"[\w)\]]:\w+\s*\(", code), "method calls on strings need the string library"


def test_argocd_cm_embeds_the_same_script() -> None:
    cm = yaml.safe_load((EXAMPLES / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    data = cm["data"]
    assert data["resource.customizations.health.sie.dev_ModelConfig"] == SCRIPT
    ignored = yaml.safe_load(data["resource.customizations.ignoreResourceUpdates.sie.dev_ModelConfig"])
    pointers = ignored["jsonPointers"]
    # the fields that change on every worker ack; conditions stay watched so health refreshes
    assert {"/status/bundles", "/status/ackedWorkers", "/status/pendingWorkers"} <= set(pointers)
    assert not any(p.startswith("/status/conditions") or p == "/status" for p in pointers)


def test_application_examples() -> None:
    apps = list(yaml.safe_load_all((EXAMPLES / "application.yaml").read_text()))
    assert [a["kind"] for a in apps] == ["Application", "Application"]
    for app in apps:
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    assert apps[0]["spec"]["source"]["path"] == "charts/sie-operator"
