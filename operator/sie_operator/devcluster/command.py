"""``sie-operator controlplane``: a local kube-apiserver + etcd until Ctrl-C.

Why: running the operator (or kubectl, helm) against a real apiserver during development
without Docker. The admin kubeconfig goes to a stable path so other shells can use it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from sie_operator.cli import UsageError
from sie_operator.devcluster.controlplane import (
    BinaryNotFoundError,
    ControlPlane,
    ControlPlaneError,
    parse_duration,
)

log = logging.getLogger(__name__)

DEFAULT_KUBECONFIG_OUT = "./.run/controlplane/kubeconfig"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig-out",
        default=DEFAULT_KUBECONFIG_OUT,
        metavar="PATH",
        help=f"where to write the admin kubeconfig (default {DEFAULT_KUBECONFIG_OUT}); removed on exit",
    )
    parser.add_argument(
        "--start-timeout",
        default=None,
        metavar="DURATION",
        help="how long to wait for the apiserver, seconds or Go duration like 90s "
        "(default: $KUBEBUILDER_CONTROLPLANE_START_TIMEOUT or 90s)",
    )
    parser.add_argument(
        "--assets-dir",
        default=None,
        metavar="DIR",
        help="dir with kube-apiserver/etcd/kubectl (default: $KUBEBUILDER_ASSETS, else ensure-bins)",
    )


def _prepare_output(path: Path) -> None:
    """Fail before starting anything if the kubeconfig cannot be written there."""
    if path.is_dir():
        raise UsageError(f"--kubeconfig-out {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"--kubeconfig-out {path}: cannot write there ({exc.strerror or exc})") from None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kubeconfig-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    out = Path(args.kubeconfig_out).expanduser().absolute()
    _prepare_output(out)
    try:
        timeout = parse_duration(args.start_timeout) if args.start_timeout else None
    except ValueError as exc:
        raise UsageError(f"--start-timeout: {exc}") from None
    if args.assets_dir and not Path(args.assets_dir).is_dir():
        raise UsageError(f"--assets-dir {args.assets_dir} is not a directory")
    try:
        cp = ControlPlane(assets_dir=args.assets_dir, start_timeout=timeout)
    except ControlPlaneError as exc:  # bad KUBEBUILDER_CONTROLPLANE_*_TIMEOUT
        raise UsageError(str(exc)) from None

    # SIGTERM behaves like Ctrl-C so both end in the same clean stop. SIGINT is set too:
    # a background job started by a script inherits it as ignored.
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    old_int = signal.signal(signal.SIGINT, _raise_interrupt)
    wrote = False
    try:
        try:
            cp.start()
        except BinaryNotFoundError as exc:
            raise UsageError(f"{str(exc).splitlines()[0]} (set KUBEBUILDER_ASSETS or --assets-dir)") from None
        except ControlPlaneError as exc:
            log.error("%s", exc)
            return 1
        _write_atomic(out, cp.kubeconfig.read_bytes())
        wrote = True
        print(f"export KUBECONFIG={out}")
        print(f"# kube-apiserver {cp.server} ready in {cp.start_seconds or 0:.1f}s; Ctrl-C to stop")
        sys.stdout.flush()
        try:
            while cp.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            log.info("stopping control plane")
            return 0
        log.error("control plane process exited unexpectedly\n%s", cp.logs_tail())
        return 1
    finally:
        # No second interrupt halfway through the stop: that would leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cp.stop()
            if wrote:
                with contextlib.suppress(OSError):
                    out.unlink()  # it points at a port that is gone now
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
