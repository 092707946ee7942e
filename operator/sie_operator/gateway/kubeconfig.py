"""A tiny Kubernetes client configuration loader: in-cluster or a kubeconfig file.

Enough for a watch with aiohttp: API server URL, TLS (CA file/data, client certificate
file/data, insecure-skip-tls-verify) and bearer token (inline, file, or the in-cluster
service-account token, re-read on every request because bound tokens rotate). Exec and
auth-provider plugins are refused with a clear message rather than half-supported.
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sie_operator.catalog import yamlio

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(ValueError):
    """Unusable Kubernetes client configuration; ``str(exc)`` is one line."""


@dataclass
class KubeClientConfig:
    server: str
    ssl_context: ssl.SSLContext | bool  # True: default verification (plain http needs none)
    token: str | None = None
    token_file: Path | None = None
    namespace: str | None = None  # the in-cluster pod namespace / context namespace

    def auth_header(self) -> dict[str, str]:
        """Blocking (reads the token file): call it off the event loop."""
        token = self.token
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                raise KubeConfigError(f"cannot read token file {self.token_file}: {exc}") from exc
        return {"Authorization": f"Bearer {token}"} if token else {}


def load_incluster(sa_dir: Path = SA_DIR, env: dict[str, str] | None = None) -> KubeClientConfig:
    env = dict(os.environ) if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError("not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset)")
    token_file = sa_dir / "token"
    if not token_file.is_file():
        raise KubeConfigError(f"service account token {token_file} not found")
    ctx = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
    namespace = None
    with contextlib.suppress(OSError):
        namespace = (sa_dir / "namespace").read_text().strip() or None
    h = f"[{host}]" if ":" in host else host
    return KubeClientConfig(f"https://{h}:{port}", ctx, token_file=token_file, namespace=namespace)


def _pick(items: Any, name: str, kind: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(kind), dict):
            return dict(item[kind])
    raise KubeConfigError(f"kubeconfig has no {kind} named {name!r}")


@contextlib.contextmanager
def _pem_file(data_b64: str | None, path: str | None, base: Path, what: str) -> Iterator[str | None]:
    """A path to PEM material given inline (base64) or as a path relative to the kubeconfig."""
    if path:
        p = Path(path)
        yield str(p if p.is_absolute() else base / p)
        return
    if not data_b64:
        yield None
        return
    try:
        pem = base64.b64decode(data_b64, validate=True)
    except ValueError as exc:
        raise KubeConfigError(f"kubeconfig {what} data is not valid base64") from exc
    fd, name = tempfile.mkstemp(prefix="sie-kube-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def load_kubeconfig(path: Path, context: str | None = None) -> KubeClientConfig:
    try:
        doc = yamlio.load(path.read_bytes())
    except (OSError, yamlio.YamlError) as exc:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise KubeConfigError(f"kubeconfig {path} is not a mapping")
    ctx_name = context or doc.get("current-context")
    if not ctx_name:
        raise KubeConfigError(f"kubeconfig {path} has no current-context")
    ctx = _pick(doc.get("contexts"), ctx_name, "context")
    cluster = _pick(doc.get("clusters"), ctx.get("cluster", ""), "cluster")
    user = _pick(doc.get("users"), ctx.get("user", ""), "user") if ctx.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise KubeConfigError("kubeconfig user uses an exec/auth-provider plugin, which is not supported")
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise KubeConfigError(f"kubeconfig cluster {ctx.get('cluster')!r} has no server")
    base = path.parent
    sslctx: ssl.SSLContext | bool = True
    if server.startswith("https://"):
        insecure = bool(cluster.get("insecure-skip-tls-verify"))
        ca_data, ca_path = cluster.get("certificate-authority-data"), cluster.get("certificate-authority")
        with _pem_file(None if insecure else ca_data, None if insecure else ca_path, base, "CA") as ca:
            try:
                ctx_ssl = ssl.create_default_context(cafile=ca)
            except (OSError, ssl.SSLError) as exc:
                raise KubeConfigError(f"cannot load the kubeconfig CA: {exc}") from exc
        if insecure:
            ctx_ssl.check_hostname = False
            ctx_ssl.verify_mode = ssl.CERT_NONE
        with (
            _pem_file(
                user.get("client-certificate-data"), user.get("client-certificate"), base, "cert"
            ) as cert,
            _pem_file(user.get("client-key-data"), user.get("client-key"), base, "key") as key,
        ):
            if cert:
                try:
                    ctx_ssl.load_cert_chain(cert, key)
                except (OSError, ssl.SSLError) as exc:
                    raise KubeConfigError(f"cannot load the kubeconfig client certificate: {exc}") from exc
        sslctx = ctx_ssl
    token = user.get("token") if isinstance(user.get("token"), str) else None
    token_file = user.get("tokenFile")
    tf = None
    if isinstance(token_file, str) and token_file:
        tf = Path(token_file) if Path(token_file).is_absolute() else base / token_file
    ns = ctx.get("namespace") if isinstance(ctx.get("namespace"), str) else None
    return KubeClientConfig(server.rstrip("/"), sslctx, token=token, token_file=tf, namespace=ns)


def load_config(kubeconfig: str | None = None, context: str | None = None) -> KubeClientConfig:
    """Explicit/``KUBECONFIG`` file first, then in-cluster, then ``~/.kube/config``.

    Blocking (reads files): call it before the loop starts or in a thread.
    """
    explicit = kubeconfig or os.environ.get("KUBECONFIG")
    if explicit:
        first = next((p for p in explicit.split(os.pathsep) if p), "")
        return load_kubeconfig(Path(first).expanduser(), context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return load_incluster()
    home = Path.home() / ".kube" / "config"
    if home.is_file():
        return load_kubeconfig(home, context)
    raise KubeConfigError("no Kubernetes configuration: set KUBECONFIG or run in a cluster")
