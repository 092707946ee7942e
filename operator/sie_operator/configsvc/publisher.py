"""NATS publisher of config deltas (core NATS, nats-py).

It connects in the background with endless reconnects, so an unreachable NATS never
blocks startup (SIE's service blocks forever there); ``connected`` tells the service
whether a changing write can be distributed right now. A publish is followed by a flush
with a short timeout, so "published" means the server has the messages, not merely that
they sit in the client's buffer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from nats.aio.client import Client as NATS

from sie_operator.natsconn import (
    ErrorLog,
    NatsAuth,
    NatsConfigError,
    bounded_close,
    connect_options,
    redact_url,
)

from .metrics import Metrics

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "sie.config.models."
ALL_SUBJECT = SUBJECT_PREFIX + "_all"
TRUSTED_PRODUCER = "sie-config"  # the SIE gateway's default allowlist entry


def is_trusted_by_default(producer_id: str) -> bool:
    """Whether an SIE gateway with its default allowlist accepts deltas from this id."""
    return producer_id == TRUSTED_PRODUCER or producer_id.startswith(TRUSTED_PRODUCER + "-")


def build_payload(
    *,
    router_id: str,
    bundle_id: str,
    epoch: int,
    bundle_config_hash: str,
    model_id: str,
    profiles_added: Sequence[str],
    model_config: str,
    affected_bundles: Sequence[str],
) -> bytes:
    """One delta, keys in the contract's order (gateways and workers parse it as JSON)."""
    return orjson.dumps(
        {
            "router_id": router_id,
            "bundle_id": bundle_id,
            "epoch": epoch,
            "bundle_config_hash": bundle_config_hash,
            "model_id": model_id,
            "profiles_added": list(profiles_added),
            "model_config": model_config,
            "affected_bundles": list(affected_bundles),
        }
    )


@dataclass
class PublishResult:
    failed_bundles: list[str]
    total: int

    @property
    def ok(self) -> bool:
        return not self.failed_bundles


class NatsPublisher:
    def __init__(
        self,
        url: str,
        producer_id: str,
        metrics: Metrics,
        *,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 2.0,
        flush_timeout: float = 2.0,
        auth: NatsAuth | None = None,
    ) -> None:
        self.url = url
        self.shown_url = redact_url(url)  # the only form that is ever logged
        self.auth = auth or NatsAuth()
        self.producer_id = producer_id
        self.metrics = metrics
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self.flush_timeout = flush_timeout
        self._nc: NATS | None = None
        self._task: asyncio.Task[None] | None = None
        self._error_log = ErrorLog(log, self.shown_url)
        metrics.nats_connected.set(0)

    @property
    def connected(self) -> bool:
        nc = self._nc
        return nc is not None and nc.is_connected

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._connect(), name="nats-connect")

    async def _connect(self) -> None:
        nc = NATS()
        self._nc = nc
        try:
            options = connect_options(self.url, self.auth)
        except NatsConfigError as exc:  # settings validate this at startup; a file may have gone since
            log.error("NATS connection to %s abandoned: %s", self.shown_url, exc)
            return
        try:
            await nc.connect(
                **options,
                name=self.producer_id,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                # nats-py annotates these as int but only passes them to asyncio (floats work)
                reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
                connect_timeout=self.connect_timeout,  # type: ignore[arg-type]
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                error_cb=self._on_error,
                closed_cb=self._on_closed,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("NATS connection to %s abandoned: %s", self.shown_url, redact_url(str(exc)))
            return
        self.metrics.nats_connected.set(1)
        log.info("connected to NATS at %s as producer %r", self.shown_url, self.producer_id)

    async def _on_disconnected(self) -> None:
        self.metrics.nats_connected.set(0)
        log.warning("NATS disconnected; changing writes get 503 nats_unavailable until it reconnects")

    async def _on_reconnected(self) -> None:
        self.metrics.nats_connected.set(1)
        log.info("NATS reconnected")

    async def _on_closed(self) -> None:
        self.metrics.nats_connected.set(0)

    async def _on_error(self, exc: Exception) -> None:
        # nats-py calls this for every failed (re)connect attempt; ErrorLog keeps it readable.
        self._error_log(exc)

    async def publish(self, payloads: Sequence[tuple[str, bytes]]) -> PublishResult:
        """Publish each (bundle, payload) to the bundle subject, then the same bytes to ``_all``.

        A bundle whose own publish fails is not copied to ``_all``; the others go on.
        """
        failed: list[str] = []
        nc = self._nc
        for bundle, payload in payloads:
            if nc is None:
                failed.append(bundle)
                continue
            try:
                await nc.publish(SUBJECT_PREFIX + bundle, payload)
                await nc.publish(ALL_SUBJECT, payload)
            except Exception as exc:
                log.warning("NATS publish for bundle %s failed: %s", bundle, redact_url(str(exc)))
                failed.append(bundle)
        return PublishResult(failed, len(payloads))

    async def flush(self) -> bool:
        """Wait (bounded) until the server has everything published so far."""
        nc = self._nc
        if nc is None:
            return False
        try:
            await nc.flush(timeout=self.flush_timeout)  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("NATS flush failed: %s", redact_url(str(exc)) or type(exc).__name__)
            return False
        return True

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            # bounded: nats-py's connect loop can swallow a cancellation while it retries;
            # closing the client below is what ends it then
            await asyncio.wait({task}, timeout=2.0)
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await bounded_close(nc.close(), 2.0)
        self.metrics.nats_connected.set(0)
