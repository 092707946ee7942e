"""Kubernetes credentials from the official asyncio client, renewed when they expire or fail.

One place decides where credentials come from, for every process that talks to the API
server (the operator's status writer, Events and gateway discovery, kopf's own watch via
its login handler, and the gateway's worker discovery):

- an explicit ``--kubeconfig`` wins; otherwise the pod's service account (in-cluster),
  otherwise ``$KUBECONFIG`` / ``~/.kube/config``;
- kubeconfigs are read by ``kubernetes_asyncio`` itself, so ``exec`` credential plugins
  (EKS, GKE, AKS), OIDC refresh, token files and client certificates all work as with kubectl;
- a token is renewed before its ``expirationTimestamp`` (exec), re-read every minute
  (in-cluster bound tokens rotate), and on demand after a 401 (``refresh(force=True)``);
- inline certificate data goes to files in a private directory (0700) that ``close``
  removes, so no key material is left behind.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from typing import Any

import kopf
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException, incluster_config, kube_config

IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class KubeAuthError(Exception):
    """No usable credentials; ``str(exc)`` is one line."""


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.isfile(
        incluster_config.SERVICE_TOKEN_FILENAME
    )


def _kubeconfig_paths(path: str | None) -> tuple[str, str]:
    paths = (
        path or os.environ.get("KUBECONFIG") or os.path.expanduser(kube_config.KUBE_CONFIG_DEFAULT_LOCATION)
    )
    first = paths.split(os.pathsep)[0]
    if not os.path.isfile(first):
        raise KubeAuthError(f"no Kubernetes credentials: not in a cluster and no kubeconfig at {first}")
    return paths, first


class KubeAuth:
    """Holds one ``kubernetes_asyncio`` Configuration and keeps its credentials fresh."""

    def __init__(self) -> None:
        self.configuration = Configuration()
        self.default_namespace: str | None = None
        self.source = ""
        self._loader: kube_config.KubeConfigLoader | None = None
        self._incluster: incluster_config.InClusterConfigLoader | None = None
        self._tmp = tempfile.mkdtemp(prefix="sie-kube-")

    @classmethod
    async def load(cls, kubeconfig: str | None = None, *, context: str | None = None) -> KubeAuth:
        auth = cls()
        try:
            if kubeconfig is None and _in_cluster():
                auth._load_in_cluster()
            else:
                await auth._load_kubeconfig(kubeconfig, context)
        except (ConfigException, OSError, KeyError, TypeError, ValueError, AssertionError) as exc:
            auth.close()
            raise KubeAuthError(f"cannot load Kubernetes credentials: {exc}") from None
        return auth

    def _load_in_cluster(self) -> None:
        self._incluster = incluster_config.InClusterConfigLoader(
            token_filename=incluster_config.SERVICE_TOKEN_FILENAME,
            cert_filename=incluster_config.SERVICE_CERT_FILENAME,
        )
        self._incluster.load_and_set(self.configuration)  # installs a re-read-every-minute hook
        self.source = "in-cluster service account"
        try:
            with open(IN_CLUSTER_NAMESPACE) as f:
                self.default_namespace = f.read().strip() or None
        except OSError:
            self.default_namespace = None

    async def _load_kubeconfig(self, path: str | None, context: str | None) -> None:
        paths, first = _kubeconfig_paths(path)
        merged = kube_config.KubeConfigMerger(paths)
        self._loader = kube_config.KubeConfigLoader(
            config_dict=merged.config,
            active_context=context,
            config_base_path=None,
            config_persister=None,
            temp_file_path=self._tmp,
        )
        await self._loader.load_and_set(self.configuration)
        self.configuration.refresh_api_key_hook = self._renew_if_expired
        ctx = self._loader.current_context or {}
        self.default_namespace = (
            (ctx.get("context") or {}).get("namespace") if isinstance(ctx, dict) else None
        )
        self.source = f"kubeconfig {first}"

    async def _renew_if_expired(self, _cfg: Any) -> None:
        """Before each request: an exec credential past its expiry is fetched again."""
        loader = self._loader
        if loader is None or self.expiration is None:
            return
        if self.expiration - datetime.timedelta(seconds=10) <= datetime.datetime.now(datetime.UTC):
            await self.refresh(force=True)

    @property
    def expiration(self) -> datetime.datetime | None:
        expiry = getattr(self._loader, "exec_plugin_expiry", None) if self._loader is not None else None
        return expiry if isinstance(expiry, datetime.datetime) else None

    async def refresh(self, *, force: bool = True) -> None:
        """Fetch credentials again (after a 401, or on expiry): the exec plugin runs again,
        token files are re-read."""
        if self._incluster is not None:
            self._incluster._read_token_file()  # type: ignore[no-untyped-call] # the library's own reader; bound tokens rotate
            self.configuration.api_key["BearerToken"] = self._incluster.token
            return
        if self._loader is None:
            return
        if force and hasattr(self._loader, "exec_plugin_expiry"):
            del self._loader.exec_plugin_expiry  # the library reuses an unexpired exec token otherwise
        await self._loader.load_and_set(self.configuration)

    @property
    def server(self) -> str:
        return str(self.configuration.host).rstrip("/")

    def connection_info(self) -> kopf.ConnectionInfo:
        """The same identity for kopf's watch (its login handler returns this)."""
        c = self.configuration
        scheme = token = None
        bearer = c.api_key.get("BearerToken") if c.api_key else None
        if isinstance(bearer, str) and bearer:
            scheme, _, token = bearer.partition(" ")
            if not token:
                scheme, token = "Bearer", bearer
        return kopf.ConnectionInfo(
            server=self.server,
            ca_path=c.ssl_ca_cert or None,
            insecure=not c.verify_ssl,
            scheme=scheme,
            token=token,
            certificate_path=c.cert_file or None,
            private_key_path=c.key_file or None,
            default_namespace=self.default_namespace,
            expiration=self.expiration,
        )

    def close(self) -> None:
        """Remove the private directory of inline certificate files."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        # the library caches temp file names by content across loaders: drop ours
        cache = getattr(kube_config, "_temp_files", None)
        if isinstance(cache, dict):
            for key in [k for k, v in cache.items() if str(v).startswith(self._tmp)]:
                del cache[key]
