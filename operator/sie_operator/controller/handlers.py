"""kopf wiring, kept thin: every watch event is handed to the driver's inbox.

We use level-triggered ``on.event`` rather than kopf's create/update handlers: those store
a diff-base and progress annotations on the object, while our reconcile is idempotent and
needs neither. The operator therefore writes nothing but ``/status`` (and Events); GitOps
tools see no drift from it. No kopf index either: ownership of a sieId is decided by the
reconcile core over all watched namespaces, after the driver's own complete listing
(kopf's index keeps deleted objects across a re-list, and is per namespace).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from .spec import API_GROUP as GROUP
from .spec import API_VERSION as VERSION
from .spec import PLURAL


def build_registry(
    observe: Callable[[str | None, Mapping[str, Any]], None],
    login_info: Callable[[], Awaitable[kopf.ConnectionInfo]],
) -> kopf.OperatorRegistry:
    """``observe`` takes each watch event (the driver's intake); ``login_info`` gives fresh
    credentials of the operator's own (``kube.auth``), so its watch and the status writer are
    one identity, and exec plugins and token renewal work for both."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry, id="login")  # type: ignore[arg-type]
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf asks again after a 401 and before ``expiration``: fetch fresh credentials
        return await login_info()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="modelconfig_event")  # type: ignore[arg-type]
    async def modelconfig_event(event: Any, body: Any, **_: Any) -> None:
        observe(event.get("type"), dict(body))

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
