"""kopf wiring, kept thin: every handler parses and hands over to the Reconciler.

We use level-triggered ``on.event`` (plus an index for the sieId claims) rather than
kopf's create/update handlers: those store a diff-base and progress annotations on the
object, while our reconcile is idempotent and needs neither. The operator therefore
writes nothing but ``/status`` (and Events); GitOps tools see no drift from it.
kopf starts handlers only after its indexes are filled from the initial listing, so the
"older resource wins" rule for duplicate sieIds is decided on the full picture even
right after a restart.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from .reconcile import GROUP, PLURAL, VERSION, Reconciler, holds_claim


def build_registry(reconciler: Reconciler, *, prefer_kubeconfig: bool = False) -> kopf.OperatorRegistry:
    """``prefer_kubeconfig``: an explicit --kubeconfig wins over the pod's service account,
    as in kube.client.load_credentials, so kopf and the status writer are one identity."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry, id="login")  # type: ignore[arg-type]
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # the same sources, in the same order, as kube.client.load_credentials
        if prefer_kubeconfig:
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="modelconfig_claims")  # type: ignore[arg-type]
    def modelconfig_claims(
        namespace: str | None, spec: Any, meta: Any, status: Any, **_: Any
    ) -> dict[Any, Any]:
        claim = (meta.get("creationTimestamp") or "", meta.get("name"), holds_claim(status))
        return {(namespace, spec.get("sieId")): claim}

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="modelconfig_event")  # type: ignore[arg-type]
    async def modelconfig_event(
        event: Any,
        body: Any,
        namespace: str | None,
        spec: Any,
        modelconfig_claims: kopf.Index[Any, Any],
        **_: Any,
    ) -> None:
        claims = list(modelconfig_claims.get((namespace, spec.get("sieId")), []))
        await reconciler.observe(event.get("type"), dict(body), claims)

    return registry


def configure(settings: kopf.OperatorSettings) -> None:
    """Operator-wide kopf settings: quiet Events, no finalizers, prompt workers."""
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = "sie.dev/finalizer"  # declared, but no handler needs it
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="sie.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="sie.dev")
    settings.watching.server_timeout = 300
    # no worker_limit: kopf holds each object's worker slot while the handlers wait for the
    # indexes to be filled from the initial listing, so a limit below the number of objects
    # deadlocks a (re)started operator; the write path bounds its own concurrency instead.
    # A per-object worker frees itself 0.1 s after its last event (kopf waits 5 s by default).
    settings.queueing.idle_timeout = 0.1
