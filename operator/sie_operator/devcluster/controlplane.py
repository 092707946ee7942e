"""Start a real etcd + kube-apiserver on loopback, the way controller-runtime's envtest does.

Why: the operator's CRD schema, CEL rules, RBAC and status subresource only mean something
when a real apiserver enforces them. Docker (kind) is not available everywhere, so this runs
the two binaries directly, with RBAC on (never AlwaysAllow) and throw-away certificates.

Binaries are looked up like envtest (``TEST_ASSET_<NAME>``, ``$KUBEBUILDER_ASSETS``, ...) and,
failing that, obtained with ``e2e/controlplane/ensure-bins`` (builds from the Go module proxy
once, then reuses). Nothing outlives the Python process: children run in their own process
group, die with their parent (Linux ``PR_SET_PDEATHSIG``) and are stopped at exit.
"""

from __future__ import annotations

import atexit
import base64
import collections
import contextlib
import ctypes
import datetime as dt
import http.client
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = 90.0
DEFAULT_STOP_TIMEOUT = 20.0
WORKDIR_PREFIX = "sie-controlplane-"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
_LOG_TAIL_LINES = 40


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, reached or used."""


class BinaryNotFoundError(ControlPlaneError):
    """A binary (kube-apiserver, etcd, kubectl) could not be found or built."""


class _PortInUseError(ControlPlaneError):
    """A free port was taken by someone else between probing and binding; start() retries."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike CalledProcessError, str() includes kubectl's stderr."""

    def __str__(self) -> str:
        err = (self.stderr or "").strip()
        return f"{super().__str__()}\n{err}" if err else super().__str__()


# --------------------------------------------------------------------------- durations


_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"1m30s"`` or ``"500ms"``.

    envtest's KUBEBUILDER_CONTROLPLANE_*_TIMEOUT are Go durations; plain numbers are accepted
    too because that is what people type.
    """
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _GO_DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {value!r} (use seconds or a Go duration like 60s, 1m30s)")
    return total


def _timeout_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ControlPlaneError(f"{name}: {exc}") from None


# --------------------------------------------------------------------------- binaries


def repo_root() -> Path:
    """The checkout holding ``e2e/controlplane/ensure-bins`` (SIE_OPERATOR_REPO wins)."""
    env = os.environ.get("SIE_OPERATOR_REPO")
    if env:
        return Path(env).resolve()
    # operator/sie_operator/devcluster/controlplane.py -> repo root (editable install)
    return Path(__file__).resolve().parents[3]


_ensure_lock = threading.Lock()
_ensure_result: Path | BinaryNotFoundError | None = None


def ensure_bins_dir() -> Path:
    """Run ``ensure-bins`` once per process and return the assets dir it prints.

    The first run on a machine compiles kube-apiserver/etcd/helm (minutes); afterwards it
    only checks version stamps. A failure is remembered so a test session does not retry a
    slow, doomed build for every test.
    """
    global _ensure_result
    with _ensure_lock:
        if _ensure_result is None:
            _ensure_result = _run_ensure_bins()
        if isinstance(_ensure_result, BinaryNotFoundError):
            raise _ensure_result
        return _ensure_result


def _run_ensure_bins() -> Path | BinaryNotFoundError:
    script = repo_root() / "e2e" / "controlplane" / "ensure-bins"
    if not script.is_file():
        return BinaryNotFoundError(
            f"no {script}; set KUBEBUILDER_ASSETS to a dir with kube-apiserver, etcd and kubectl, "
            "or SIE_OPERATOR_REPO to the sie-operator checkout"
        )
    if shutil.which("bash") is None:
        return BinaryNotFoundError("bash is needed to run ensure-bins; set KUBEBUILDER_ASSETS instead")
    log.debug("obtaining Kubernetes test binaries with %s", script)
    tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:  # stream progress: a cold build is long and silent otherwise
        line = line.rstrip("\n")
        tail.append(line)
        log.info("ensure-bins: %s", line.removeprefix("ensure-bins: "))
    out = proc.stdout.read()
    rc = proc.wait()
    if rc != 0:
        return BinaryNotFoundError(
            f"{script} failed (exit {rc}); set KUBEBUILDER_ASSETS to skip building. Last output:\n"
            + "\n".join(tail)
        )
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if not lines or not Path(lines[-1]).is_dir():
        return BinaryNotFoundError(f"{script} printed no assets directory (stdout: {out!r})")
    took = time.monotonic() - started
    log.log(logging.INFO if took > 5 else logging.DEBUG, "ensure-bins: assets in %s (%.1fs)", lines[-1], took)
    return Path(lines[-1])


def _env_asset_name(name: str) -> str:
    """envtest's TEST_ASSET_<NAME>: upper-case, non-alphanumerics to '_', leading digits dropped."""
    return "TEST_ASSET_" + re.sub(r"[^A-Z0-9]", "_", name.upper()).lstrip("0123456789")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binary(
    name: str,
    *,
    assets_dir: Path | None = None,
    allow_path: bool = False,
    build: bool = True,
) -> Path:
    """Resolve a control-plane binary in envtest's order, then fall back to ensure-bins.

    Order: ``TEST_ASSET_<NAME>``, ``$KUBEBUILDER_ASSETS/<name>``, ``assets_dir``,
    ``/usr/local/kubebuilder/bin``, ``$PATH`` (only if ``allow_path``; used for kubectl and helm
    against an existing cluster), then the dir printed by ``ensure-bins`` (if ``build``).
    """
    env_path = os.environ.get(_env_asset_name(name))
    if env_path:
        p = Path(env_path)
        if not _executable(p):
            raise BinaryNotFoundError(f"{_env_asset_name(name)}={env_path} is not an executable file")
        return p
    candidates: list[Path] = []
    if os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(os.environ["KUBEBUILDER_ASSETS"]) / name)
    if assets_dir is not None:
        candidates.append(assets_dir / name)
    candidates.append(Path("/usr/local/kubebuilder/bin") / name)
    for c in candidates:
        if _executable(c):
            return c
    if allow_path:
        found = shutil.which(name)
        if found:
            return Path(found)
    if not build:
        raise BinaryNotFoundError(f"{name} not found (looked in {', '.join(map(str, candidates))})")
    built = ensure_bins_dir() / name
    if not _executable(built):
        raise BinaryNotFoundError(f"ensure-bins did not provide {built}")
    return built


# --------------------------------------------------------------------------- certificates


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: generated in microseconds, accepted by kube-apiserver for TLS, client certs and
    # service-account signing (ES256).
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    # a CA signs certificates; a leaf only signs handshakes
    b = b.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    if ca:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook making the child get SIGKILL when this process dies (Linux only).

    That is what keeps a SIGKILLed or crashed test run from leaking etcd/apiserver processes
    and their ports. PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is
    only used from the main thread, whose lifetime is the process's.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # parent already gone before prctl took effect
            os._exit(1)

    return hook


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_workdirs() -> None:
    """Delete work dirs left by runs that were killed before they could clean up."""
    base = Path(tempfile.gettempdir())
    for d in base.glob(WORKDIR_PREFIX + "*"):
        try:
            owner = int((d / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not _pid_alive(owner):
            shutil.rmtree(d, ignore_errors=True)


_live: set[ControlPlane] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """Last line of defence: interpreter exit (Ctrl-C, failed session) stops every plane."""
    with _live_lock:
        planes = list(_live)
    for cp in planes:
        with contextlib.suppress(Exception):
            cp.stop()


# --------------------------------------------------------------------------- the control plane


class ControlPlane:
    """etcd + kube-apiserver with an admin kubeconfig; or a wrapper for an existing cluster.

    Use ``with ControlPlane() as cp:`` or ``start()``/``stop()``. ``kubeconfig`` is a
    self-contained admin kubeconfig (client cert in ``system:masters``); RBAC is enforced for
    everyone else, so ``service_account_kubeconfig()`` gives a client with exactly the rights
    bound to that ServiceAccount.
    """

    def __init__(
        self,
        *,
        assets_dir: str | Path | None = None,
        start_timeout: float | None = None,
        stop_timeout: float | None = None,
        extra_apiserver_args: Sequence[str] = (),
        extra_etcd_args: Sequence[str] = (),
    ) -> None:
        self.assets_dir: Path | None = Path(assets_dir) if assets_dir is not None else None
        self.start_timeout = (
            start_timeout
            if start_timeout is not None
            else _timeout_from_env("KUBEBUILDER_CONTROLPLANE_START_TIMEOUT", DEFAULT_START_TIMEOUT)
        )
        self.stop_timeout = (
            stop_timeout
            if stop_timeout is not None
            else _timeout_from_env("KUBEBUILDER_CONTROLPLANE_STOP_TIMEOUT", DEFAULT_STOP_TIMEOUT)
        )
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_etcd_args = list(extra_etcd_args)
        #: Seconds the last start() took until /readyz and the default namespace were there.
        self.start_seconds: float | None = None
        self.workdir: Path | None = None
        self.etcd_url: str | None = None
        self._external = False
        self._kubeconfig: Path | None = None
        self._server: str | None = None
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._cluster_entry: dict[str, Any] | None = None
        self._lock = threading.RLock()

    # ---- construction for an existing cluster

    @classmethod
    def existing(cls, kubeconfig: str | Path | None = None) -> ControlPlane:
        """Wrap a running cluster (``E2E_CLUSTER=existing``): start/stop touch no process.

        ``kubeconfig`` defaults to $KUBECONFIG, then ~/.kube/config. A $KUBECONFIG list is
        flattened into one file because ``kubectl --kubeconfig`` takes a single path.
        """
        cp = cls()
        cp._external = True
        raw = str(kubeconfig) if kubeconfig is not None else os.environ.get("KUBECONFIG", "")
        if not raw:
            raw = str(Path.home() / ".kube" / "config")
        paths = [p for p in raw.split(os.pathsep) if p]
        if len(paths) == 1:
            if not Path(paths[0]).is_file():
                raise ControlPlaneError(f"kubeconfig {paths[0]} does not exist")
            cp._kubeconfig = Path(paths[0]).resolve()
        else:
            kubectl = cp.bin("kubectl")
            flat = subprocess.run(
                [str(kubectl), "config", "view", "--flatten", "--raw"],
                env={**os.environ, "KUBECONFIG": raw},
                capture_output=True,
                text=True,
                check=False,
            )
            if flat.returncode != 0:
                raise ControlPlaneError(f"cannot merge KUBECONFIG={raw}: {flat.stderr.strip()}")
            cp._kubeconfig = cp._scratch() / "kubeconfig"
            _write_private(cp._kubeconfig, flat.stdout)
        entry = cp._current_cluster()
        server = entry.get("server")
        if not isinstance(server, str) or not server:
            raise ControlPlaneError(f"{cp._kubeconfig}: current context has no cluster server")
        cp._server = server
        return cp

    # ---- public attributes

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (self-contained: certificates are embedded)."""
        if self._kubeconfig is None:
            raise ControlPlaneError("control plane not started")
        return self._kubeconfig

    @property
    def server(self) -> str:
        """The apiserver URL, e.g. ``https://127.0.0.1:41234``."""
        if self._server is None:
            raise ControlPlaneError("control plane not started")
        return self._server

    @property
    def external(self) -> bool:
        """True when wrapping a cluster this object did not start."""
        return self._external

    @property
    def running(self) -> bool:
        """Whether both processes are alive (always True for an existing cluster)."""
        if self._external:
            return True
        return all(p is not None and p.poll() is None for p in (self._etcd, self._apiserver))

    @property
    def pids(self) -> list[int]:
        """PIDs of etcd and kube-apiserver (empty for an existing cluster)."""
        return [p.pid for p in (self._etcd, self._apiserver) if p is not None]

    def bin(self, name: str) -> Path:
        """Path of ``kube-apiserver``, ``etcd``, ``kubectl`` or ``helm`` for this plane."""
        return find_binary(
            name, assets_dir=self.assets_dir, allow_path=self._external and name in ("kubectl", "helm")
        )

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, for subprocesses (e.g. the operator) that should use it."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    # ---- lifecycle

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "existing" if self._external else ("running" if self.running else "stopped")
        return f"<ControlPlane {state} server={self._server}>"

    def start(self) -> None:
        """Start etcd and kube-apiserver and wait until the apiserver is ready.

        Raises BinaryNotFoundError when binaries are unobtainable, ControlPlaneError (with the
        tail of both logs) when a process fails or is not ready within ``start_timeout``.
        """
        with self._lock:
            if self._external or self._apiserver is not None:
                return
            apiserver = self.bin("kube-apiserver")
            etcd = self.bin("etcd")
            if self.assets_dir is None:
                self.assets_dir = apiserver.parent
            _remove_stale_workdirs()
            started = time.monotonic()
            deadline = started + self.start_timeout
            for attempt in range(3):
                try:
                    self._start_once(etcd, apiserver, deadline)
                    break
                except _PortInUseError:
                    self._teardown()
                    if attempt == 2:
                        raise
                    log.info("control plane: port taken while starting, retrying with new ports")
                except BaseException:
                    self._teardown()
                    raise
            self.start_seconds = time.monotonic() - started
            log.info(
                "control plane ready at %s in %.1fs (workdir %s)",
                self._server,
                self.start_seconds,
                self.workdir,
            )

    def stop(self) -> None:
        """SIGTERM apiserver then etcd (SIGKILL after ``stop_timeout``) and delete the workdir.

        Idempotent; for an existing cluster it only removes scratch files.
        """
        with self._lock:
            self._teardown()

    # ---- internals: start

    def _scratch(self) -> Path:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            (self.workdir / "owner.pid").write_text(f"{os.getpid()}\n")
            with _live_lock:
                _live.add(self)
        return self.workdir

    def _start_once(self, etcd: Path, apiserver: Path, deadline: float) -> None:
        work = self._scratch()
        pki = work / "pki"
        pki.mkdir(exist_ok=True)
        ca_key, srv_key, admin_key, sa_key = _key(), _key(), _key(), _key()
        ca_name = _name("sie-controlplane-ca")
        ca = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
        srv = _issue(_name("kube-apiserver"), srv_key, ca_name, ca_key, server=True)
        admin = _issue(_name("admin", "system:masters"), admin_key, ca_name, ca_key, client=True)
        files = {
            "ca.crt": _cert_pem(ca),
            "apiserver.crt": _cert_pem(srv),
            "apiserver.key": _key_pem(srv_key),
            "admin.crt": _cert_pem(admin),
            "admin.key": _key_pem(admin_key),
            "sa.key": _key_pem(sa_key),
            "sa.pub": sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        }
        for fname, data in files.items():
            _write_private(pki / fname, data)

        etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        data_dir = work / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        etcd_args = [
            str(etcd),
            "--name=sie-controlplane",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",  # set together with --initial-cluster
            f"--initial-cluster=sie-controlplane={peer_url}",
            "--log-level=warn",
        ]
        if _supports_flag(etcd, "--unsafe-no-fsync"):
            etcd_args.append("--unsafe-no-fsync=true")
        self._etcd = self._spawn("etcd", [*etcd_args, *self.extra_etcd_args])
        self._wait_etcd(deadline)

        self._server = f"https://127.0.0.1:{api_port}"
        api_args = [
            str(apiserver),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            "--endpoint-reconciler-type=none",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={self._server}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
        ]
        self._api_argv = [*api_args, *self.extra_apiserver_args]
        self._apiserver = self._spawn("kube-apiserver", self._api_argv)

        kubeconfig = work / "kubeconfig"
        self._cluster_entry = {
            "server": self._server,
            "certificate-authority-data": _b64(files["ca.crt"]),
        }
        _write_private(
            kubeconfig,
            _kubeconfig_yaml(
                self._cluster_entry,
                {
                    "client-certificate-data": _b64(files["admin.crt"]),
                    "client-key-data": _b64(files["admin.key"]),
                },
                name="admin",
            ),
        )
        self._kubeconfig = kubeconfig
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._api_port, self._api_ctx = api_port, ctx
        self._wait_apiserver(api_port, ctx, deadline)

    def restart_apiserver(self, while_down: Callable[[], None] | None = None) -> None:
        """Stop kube-apiserver, run ``while_down`` (e.g. edit etcd directly), start it again
        on the same port with the same flags: every client's watch breaks and must resume."""
        with self._lock:
            if self._external or self._apiserver is None:
                raise ControlPlaneError("restart_apiserver needs a control plane this process started")
            _terminate(self._apiserver, self.stop_timeout)
            if while_down is not None:
                while_down()
            self._apiserver = self._spawn("kube-apiserver", self._api_argv)
            self._wait_apiserver(self._api_port, self._api_ctx, time.monotonic() + self.start_timeout)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        work = self._scratch()
        logfile = work / f"{name}.log"
        with logfile.open("ab") as out:
            out.write(f"\n==> {' '.join(argv)}\n".encode())
            out.flush()
            log.debug("control plane: starting %s", " ".join(argv))
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=work,
                start_new_session=True,  # own process group: killpg reaches any helpers too
                preexec_fn=_die_with_parent(),  # only prctl in the child: no locks taken
            )

    def logs_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the kube-apiserver and etcd logs (they vanish with stop())."""
        work = self.workdir or Path("/nonexistent")
        return "\n".join(
            f"--- {name} log (tail, {work / (name + '.log')}):\n{_tail(work / (name + '.log'), lines)}"
            for name in ("kube-apiserver", "etcd")
        )

    def _failure(self, what: str) -> ControlPlaneError:
        tails = self.logs_tail()
        msg = f"control plane failed to start: {what}\n{tails}"
        if "address already in use" in tails:
            return _PortInUseError(msg)
        return ControlPlaneError(msg)

    def _check_alive(self, proc: subprocess.Popen[bytes] | None, name: str) -> None:
        if proc is not None and proc.poll() is not None:
            raise self._failure(f"{name} exited with code {proc.returncode}")

    def _wait_etcd(self, deadline: float) -> None:
        url = f"{self.etcd_url}/health"
        while True:
            self._check_alive(self._etcd, "etcd")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise self._failure(f"etcd not healthy within {self.start_timeout:g}s")
            time.sleep(0.1)

    def _wait_apiserver(self, port: int, ctx: ssl.SSLContext, deadline: float) -> None:
        # /readyz covers etcd connectivity and the RBAC bootstrap hook; the default namespace
        # is created slightly later by a controller, and tests assume it (like envtest).
        last = "no answer yet"
        for path in ("/readyz", "/api/v1/namespaces/default"):
            while True:
                self._check_alive(self._apiserver, "kube-apiserver")
                self._check_alive(self._etcd, "etcd")
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
                try:
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    body = resp.read(2000).decode("utf-8", "replace")
                    if resp.status == 200:
                        break
                    last = f"GET {path} -> {resp.status}: {body.strip()[-500:]}"
                except (OSError, http.client.HTTPException) as exc:
                    last = f"GET {path}: {exc}"
                finally:
                    conn.close()
                if time.monotonic() > deadline:
                    raise self._failure(f"kube-apiserver not ready within {self.start_timeout:g}s ({last})")
                time.sleep(0.2)

    # ---- internals: stop

    def _teardown(self) -> None:
        for proc in (self._apiserver, self._etcd):  # apiserver first: it talks to etcd
            if proc is not None:
                _terminate(proc, self.stop_timeout)
        self._apiserver = self._etcd = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        with _live_lock:
            _live.discard(self)
        if not self._external:
            self._kubeconfig = None
            self._cluster_entry = None

    # ---- kubectl and ServiceAccount kubeconfigs

    def kubectl(
        self,
        *args: str,
        kubeconfig: str | Path | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this plane (admin unless ``kubeconfig`` is given).

        With ``check`` a non-zero exit raises KubectlError, whose message includes stderr.
        """
        argv = [str(self.bin("kubectl")), f"--kubeconfig={kubeconfig or self.kubeconfig}"]
        if self.workdir is not None:
            # Per-plane discovery cache: ports get reused, and a stale ~/.kube/cache entry for
            # 127.0.0.1:<port> would hide CRDs installed in this plane.
            argv.append(f"--cache-dir={self.workdir / 'kube-cache'}")
        argv.extend(args)
        res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise KubectlError(res.returncode, argv, res.stdout, res.stderr)
        return res

    def _current_cluster(self) -> dict[str, Any]:
        if self._cluster_entry is None:
            res = self.kubectl("config", "view", "--minify", "--flatten", "--raw", "-o", "json")
            cfg = json.loads(res.stdout)
            clusters = cfg.get("clusters") or []
            if not clusters:
                raise ControlPlaneError(f"{self.kubeconfig}: no cluster in the current context")
            self._cluster_entry = dict(clusters[0]["cluster"])
        return self._cluster_entry

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        path: str | Path | None = None,
        expiration_seconds: int = 3600,
    ) -> Path:
        """Mint a token for ServiceAccount ``namespace/name`` (TokenRequest API) and write a
        kubeconfig using it, so a client has exactly that account's RBAC rights.

        The ServiceAccount must exist. ``expiration_seconds`` must be at least 600 (the
        apiserver's floor).
        """
        if expiration_seconds < 600:
            raise ValueError("expiration_seconds must be >= 600 (TokenRequest minimum)")
        body = json.dumps(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": int(expiration_seconds)},
            }
        )
        res = self.kubectl(
            "create",
            "--raw",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            "-f",
            "-",
            input=body,
        )
        try:
            token = json.loads(res.stdout)["status"]["token"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ControlPlaneError(f"unexpected TokenRequest answer: {res.stdout[:300]!r}") from exc
        out = Path(path) if path is not None else self._scratch() / f"sa-{namespace}-{name}.kubeconfig"
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_private(
            out,
            _kubeconfig_yaml(self._current_cluster(), {"token": token}, name=f"{namespace}-{name}"),
        )
        return out


# --------------------------------------------------------------------------- helpers


_flag_cache: dict[tuple[str, str], bool] = {}


def _supports_flag(binary: Path, flag: str) -> bool:
    """Whether ``binary --help`` mentions ``flag`` (envtest does the same for etcd)."""
    key = (str(binary), flag)
    if key not in _flag_cache:
        try:
            res = subprocess.run(
                [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
            )
            _flag_cache[key] = flag in (res.stdout + res.stderr)
        except (OSError, subprocess.TimeoutExpired):
            _flag_cache[key] = False
    return _flag_cache[key]


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout``, and reap the leader."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("control plane: pid %d ignored SIGTERM for %gs, killing", proc.pid, timeout)
    # Kill whatever is left in the group (also if the leader exited but left children).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _write_private(path: Path, data: str | bytes) -> None:
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)


def _kubeconfig_yaml(cluster: dict[str, Any], user: dict[str, Any], *, name: str) -> str:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sie-controlplane", "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": "sie-controlplane", "user": name}}],
        "current-context": name,
        "preferences": {},
    }
    return str(yaml.safe_dump(cfg, sort_keys=False))


def iter_log_files(cp: ControlPlane) -> Iterator[Path]:
    """The process logs of a running plane (for attaching to failed-test reports)."""
    if cp.workdir is not None:
        yield from sorted(cp.workdir.glob("*.log"))
