"""kubectl helpers for end-to-end tests and benchmarks (one namespace, waiting on conditions)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any


class Kube:
    """kubectl against one namespace, with small waiting helpers."""

    def __init__(self, cp: Any, namespace: str) -> None:
        self.cp = cp
        self.ns = namespace

    def run(self, *args: str, check: bool = True, input: str | None = None) -> Any:
        return self.cp.kubectl("-n", self.ns, *args, check=check, input=input)

    def apply(self, manifest: dict[str, Any] | str, check: bool = True) -> Any:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.run("apply", "-f", "-", check=check, input=text)

    def get(self, name: str) -> dict[str, Any] | None:
        r = self.run("get", "modelconfig", name, "-o", "json", check=False)
        if r.returncode != 0:
            return None
        return dict(json.loads(r.stdout))

    def lease_holder(self, name: str = "sie-operator") -> str | None:
        """``holderIdentity`` of a Lease in this namespace; None if absent or released."""
        r = self.run("get", "lease", name, "-o", "json", check=False)
        if r.returncode != 0:
            return None
        holder = (json.loads(r.stdout).get("spec") or {}).get("holderIdentity")
        return str(holder) if holder else None

    def condition(self, name: str, ctype: str = "Ready") -> dict[str, Any] | None:
        obj = self.get(name) or {}
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") == ctype:
                return dict(c)
        return None

    def wait_for(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0, what: str = ""
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            obj = self.get(name)
            if obj is not None and predicate(obj):
                return obj
            time.sleep(0.2)
        raise AssertionError(
            f"timed out waiting for {name} {what}; last status: {json.dumps((obj or {}).get('status'))}"
        )

    def wait_ready(
        self, name: str, status: str = "True", reason: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        def ok(obj: dict[str, Any]) -> bool:
            gen = obj["metadata"].get("generation")
            st = obj.get("status") or {}
            if st.get("observedGeneration") != gen:
                return False
            for c in st.get("conditions") or []:
                if c.get("type") == "Ready":
                    return bool(c.get("status") == status and (reason is None or c.get("reason") == reason))
            return False

        return self.wait_for(name, ok, timeout, f"Ready={status} reason={reason}")

    def events(self, name: str) -> list[dict[str, Any]]:
        r = self.run("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
        return list(json.loads(r.stdout).get("items") or [])


def model_manifest(
    name: str, sie_id: str, profiles: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    profiles = profiles or {
        "default": {"adapterPath": "sie_server.adapters.bert_flash:BertFlashAdapter", "maxBatchTokens": 8192}
    }
    return {
        "apiVersion": "sie.dev/v1alpha1",
        "kind": "ModelConfig",
        "metadata": {"name": name},
        "spec": {"sieId": sie_id, "hfId": sie_id, "profiles": profiles, **spec},
    }
