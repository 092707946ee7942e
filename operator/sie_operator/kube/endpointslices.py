"""Which endpoints of a Service's EndpointSlices to talk to (pure; one rule for every caller).

An endpoint counts while it is ready (``conditions.ready`` true or unset, the API's own
rule) and not terminating: a pod that is shutting down is dropped before it stops
answering, so a rolling restart never looks like an outage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SERVICE_LABEL = "kubernetes.io/service-name"


def endpoint_urls(
    slice_obj: Any, *, port: int, scheme: str = "http", use_slice_port: bool = False
) -> frozenset[str]:
    """URLs of the usable endpoints of one EndpointSlice.

    ``use_slice_port``: take the slice's port named ``http`` (or its only unnamed port)
    instead of ``port`` when there is one.
    """
    if not isinstance(slice_obj, Mapping):
        return frozenset()
    chosen = port
    if use_slice_port:
        for p in slice_obj.get("ports") or ():
            if (
                isinstance(p, Mapping)
                and isinstance(p.get("port"), int)
                and p.get("name") in (None, "", "http")
            ):
                chosen = int(p["port"])
                break
    urls = set()
    for ep in slice_obj.get("endpoints") or ():
        if not isinstance(ep, Mapping):
            continue
        cond = ep.get("conditions") or {}
        if isinstance(cond, Mapping) and (cond.get("ready") is False or cond.get("terminating") is True):
            continue
        for addr in ep.get("addresses") or ():
            if isinstance(addr, str) and addr:
                host = f"[{addr}]" if ":" in addr else addr
                urls.add(f"{scheme}://{host}:{chosen}")
    return frozenset(urls)


def service_urls(
    slices: Iterable[Any], *, port: int, scheme: str = "http", use_slice_port: bool = False
) -> list[str]:
    out: set[str] = set()
    for s in slices:
        out |= endpoint_urls(s, port=port, scheme=scheme, use_slice_port=use_slice_port)
    return sorted(out)
