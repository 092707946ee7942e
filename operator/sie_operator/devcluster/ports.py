"""Free loopback ports for test and demo servers.

Why not just ``bind(0)``: the kernel hands out ports from its ephemeral range, the same
range it uses for the source port of every outgoing connection, and it may return a port
it just gave back. A port picked that way and bound a moment later by a child process
(nats-server, an HTTP server) can meanwhile be taken by an outgoing connection or handed
to the next ``bind(0)``: a test once sent an HTTP request to a nats-server that way.
So ports come from below the ephemeral range, are never handed out twice by one process,
and a random start keeps concurrent processes (two test runs) apart.
"""

from __future__ import annotations

import random
import socket
import threading
import time

_handed_out: set[int] = set()
_lock = threading.Lock()
_FALLBACK_RANGE = (20000, 32767)


def _safe_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range (at least 1024 of them), else a fixed range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_RANGE
    if low - 1 - 10000 >= 1024:
        return 10000, low - 1
    return _FALLBACK_RANGE


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    low, high = _safe_range()
    rng = random.Random(time.monotonic_ns() ^ id(_handed_out))
    with _lock:
        for _ in range(2000):
            port = rng.randint(low, high)
            if port in _handed_out or not _bindable(host, port):
                continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # crowded machine: let the kernel pick
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    _handed_out.add(port)
    return port


def wait_port(host: str, port: int, timeout: float) -> bool:
    """True once something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False
