"""Configuration of the config service: SIE's environment variables, overridable by flags.

Built once at startup and validated (pydantic), so a bad value is a one-line error before
anything listens. Tokens are read here once (SIE re-reads the environment per request).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sie_operator import natsconn
from sie_operator.natsconn import NatsAuth
from sie_operator.store.fs import Durability
from sie_operator.store.jetstream import MAX_REPLICAS, SCHEME, parse_location

MAX_BODY_BYTES = 1_048_576
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A configuration value that cannot be used; ``str(exc)`` is one line."""


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SettingsError(f"{name}={value!r} is not a boolean (use true or false)")


def default_store_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/sie-operator/config-store`` (``~/.local/state`` when unset)."""
    state = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return Path(state) / "sie-operator" / "config-store"


def default_producer_id(env: Mapping[str, str]) -> str:
    """``sie-config-<POD_NAME or hostname>``: SIE gateways trust ``sie-config`` and ``sie-config-*``."""
    suffix = env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname() or "local"
    if suffix == "sie-config" or suffix.startswith("sie-config-"):
        return suffix
    return f"sie-config-{suffix}"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    bundles_dir: Path | None = None  # None: the bundles shipped in the package
    models_dir: Path | None = None  # None: no baseline models
    store_dir: Path | None = None  # None: in-memory only (embedding/tests); the CLI always sets one
    store_durability: Durability = "journal"
    # jetstream://NAME: the store is JetStream stream NAME on nats_url (store_dir is then None)
    store_stream: str | None = None
    store_replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    restore: bool = True
    nats_url: str | None = Field(default=None, repr=False)  # may carry userinfo; see describe()
    nats_auth: NatsAuth = Field(default_factory=NatsAuth)
    producer_id: str = "sie-config"
    # repr=False: a logged or printed Settings never shows a credential
    auth_token: str | None = Field(default=None, repr=False)
    admin_token: str | None = Field(default=None, repr=False)
    export_token: str | None = Field(default=None, repr=False)
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1)
    idempotency_capacity: int = Field(default=1000, ge=1)
    idempotency_ttl: float = Field(default=24 * 3600.0, gt=0)
    idempotency_wait: float = Field(default=30.0, gt=0)
    nats_connect_timeout: float = Field(default=2.0, gt=0)
    nats_reconnect_wait: float = Field(default=2.0, gt=0)
    nats_flush_timeout: float = Field(default=2.0, gt=0)
    checkpoint_interval: float = Field(default=0.5, gt=0)

    @field_validator("producer_id")
    @classmethod
    def _producer_id_shape(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError("producer id must be non-empty and contain no whitespace")
        return v

    @field_validator("nats_url")
    @classmethod
    def _nats_url_shape(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        try:
            return natsconn.validate_url(v.strip())
        except natsconn.NatsConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _nats_options_usable(self) -> Settings:
        """Credential conflicts and unreadable creds/TLS files stop startup (one line)."""
        if self.store_stream and not self.nats_url:
            raise ValueError(
                f"the store {SCHEME}{self.store_stream} needs a NATS server: set --nats-url or SIE_NATS_URL"
            )
        if self.nats_url:
            try:
                natsconn.connect_options(self.nats_url, self.nats_auth)
            except natsconn.NatsConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, store_location: str | None = None, **overrides: Any
    ) -> Settings:
        """SIE's variables from ``env`` (default ``os.environ``); non-None overrides win.

        ``store_location`` is the raw ``--store-dir`` (a directory or ``jetstream://NAME``)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}

        def path_var(name: str) -> Path | None:
            raw = env.get(name)
            return Path(raw).expanduser() if raw else None

        values["bundles_dir"] = path_var("SIE_BUNDLES_DIR")
        values["models_dir"] = path_var("SIE_MODELS_DIR")
        what = "--store-dir" if store_location else "SIE_CONFIG_STORE_DIR"
        store = store_location or env.get("SIE_CONFIG_STORE_DIR")
        try:
            stream = parse_location(store) if store else None
        except ValueError as exc:
            raise SettingsError(f"{what}: {exc}") from None
        if stream:
            values["store_stream"] = stream
            values["store_dir"] = None
        elif store and "://" in store:
            raise SettingsError(
                f"{what}={store!r}: only a local directory or {SCHEME}NAME is supported (no s3:// or gs://)"
            )
        else:
            values["store_dir"] = Path(store).expanduser() if store else default_store_dir(env)
        replicas = env.get("SIE_CONFIG_STORE_REPLICAS", "").strip()
        if replicas:
            values["store_replicas"] = replicas
        if env.get("SIE_CONFIG_RESTORE", "").strip():
            values["restore"] = parse_bool("SIE_CONFIG_RESTORE", env["SIE_CONFIG_RESTORE"])
        durability = env.get("SIE_CONFIG_STORE_DURABILITY", "").strip()
        if durability:
            values["store_durability"] = durability
        values["nats_url"] = env.get("SIE_NATS_URL") or None
        values["nats_auth"] = NatsAuth.from_env(env)
        values["auth_token"] = env.get("SIE_AUTH_TOKEN")
        values["admin_token"] = env.get("SIE_ADMIN_TOKEN")
        values["export_token"] = env.get("SIE_EXPORT_TOKEN")
        values["producer_id"] = env.get("SIE_PRODUCER_ID") or default_producer_id(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise SettingsError(f"{loc}: {msg}" if loc else msg) from exc

    def describe(self) -> str:
        store = (
            f"{SCHEME}{self.store_stream} (R{self.store_replicas})"
            if self.store_stream
            else str(self.store_dir or "(memory)")
        )
        return (
            f"store={store} durability={self.store_durability} restore={self.restore} "
            f"bundles={self.bundles_dir or '(shipped)'} models={self.models_dir or '(none)'} "
            f"nats={natsconn.describe(self.nats_url, self.nats_auth)} producer_id={self.producer_id}"
        )
