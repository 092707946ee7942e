"""Store faults heal or restart: a full disk, a failed fsync, an interrupted rename, a rolled
back epoch file; a SIGKILLed process loses no acknowledged write (directory and JetStream).

Why: a store that answers "unusable until restart" while /healthz stays 200 is wedged for
good (nothing restarts it), and an epoch that steps back makes gateways miss writes. The
full-disk cases use a real, small tmpfs (skipped where this process may not mount one);
a failed fsync and an interrupted rename cannot be provoked on a healthy filesystem, so
those two are injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cfgsvc_helpers import ADMIN, MakeApi, model_yaml, write_layout
from jetstream_helpers import stream_name

from sie_operator.devcluster.natsserver import NatsCluster
from sie_operator.devcluster.ports import free_port
from sie_operator.devcluster.procs import ServerProcess, sie_operator_argv
from sie_operator.store import FileStore, StoreError
from sie_operator.store import fs as fsmod


def _open(path: Path, durability: str = "journal") -> FileStore:
    store = FileStore(path, durability=durability)  # type: ignore[arg-type]
    store.open()
    return store


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs: a real filesystem that runs out of space on demand."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs_root: Path) -> Path:
    """Fill the filesystem to the last byte; the filler file is returned (delete it to free)."""
    filler = fs_root / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 1):  # big chunks, then the last pages, then the last bytes
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


# --------------------------------------------------------------------------- full disk, real


def test_full_disk_between_journal_and_model_file_heals_once_space_is_back(small_fs: Path) -> None:
    base = small_fs / "store"
    store = _open(base)
    store.commit([("a/one", model_yaml("a/one"))], 1)
    filler = fill(small_fs)
    # The journal record fits in its segment's last page, the model file needs a new one:
    # the commit is durable (journal) but the files cannot be published.
    store.commit([("a/two", model_yaml("a/two"))], 2)
    assert store.broken and "No space left" in store.broken
    assert not store.fatal
    with pytest.raises(StoreError, match="unusable"):
        store.commit([("a/three", model_yaml("a/three"))], 3)
    assert store.epoch == 2  # the refused write changed nothing
    filler.unlink()
    # no restart: the next write re-opens the store and goes through
    store.commit([("a/three", model_yaml("a/three"))], 3)
    assert store.broken is None
    assert (base / "models" / "a__two.yaml").read_text() == model_yaml("a/two")
    assert (base / "epoch").read_text() == "3"
    store.close()
    again = _open(base)
    assert again.epoch == 3
    assert again.list_ids() == ["a/one", "a/three", "a/two"]
    assert {m.model_id: m.epoch for m in again.load_all()} == {"a/one": 1, "a/two": 2, "a/three": 3}
    again.close()


def test_heal_without_any_write(small_fs: Path) -> None:
    """An unready replica gets no writes: heal() alone (the service's background retry)
    must bring it back."""
    base = small_fs / "store"
    store = _open(base)
    store.commit([("a/one", model_yaml("a/one"))], 1)
    filler = fill(small_fs)
    store.commit([("a/two", model_yaml("a/two"))], 2)
    assert store.broken
    assert store.heal() is False and store.broken and "still failing" in store.broken
    filler.unlink()
    assert store.heal() is True and store.broken is None
    assert store.checkpoint() in (True, False)
    store.close()
    assert _open(base).epoch == 2


async def test_service_heals_in_the_background_and_probes_say_so(make_api: MakeApi, small_fs: Path) -> None:
    """Over real HTTP: readiness 503 while the disk is full, liveness stays 200 (a restart
    would not free space), writes get a clean 503, and once space is back the service is
    ready again with no write and no restart."""
    api = await make_api(store_dir=small_fs / "store", admin_token=ADMIN)
    assert (await api.post(model_yaml("a/one"), token=ADMIN)).status == 201
    filler = fill(small_fs)
    resp = await api.post(model_yaml("a/two"), token=ADMIN)
    # the commit itself is durable in the journal (or was refused whole): never a 500
    assert resp.status in (201, 503), await resp.text()
    if resp.status == 201:
        r = await api.client.get("/readyz")
        assert r.status == 503 and "store" in (await r.json())["checks"]
        resp = await api.post(model_yaml("a/three"), token=ADMIN)
        assert resp.status == 503
        assert (await resp.json())["detail"]["error"] == "store_unavailable"
    h = await api.client.get("/healthz")
    assert h.status == 200
    filler.unlink()
    for _ in range(200):
        if (await api.client.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.05)
    assert (await api.client.get("/readyz")).status == 200
    assert (await api.post(model_yaml("a/three"), token=ADMIN)).status == 201
    models = (await (await api.client.get("/v1/configs/models", headers=_bearer(ADMIN))).json())["models"]
    assert {"a/one", "a/three"} <= {m["model_id"] for m in models}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- injected faults


def test_failed_fdatasync_drops_the_unacknowledged_record_and_heals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "s"
    store = _open(base)
    store.commit([("a/one", model_yaml("a/one"))], 1)
    real = os.fdatasync
    calls = {"n": 0}

    def failing(fd: int) -> None:
        calls["n"] += 1
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fsmod.os, "fdatasync", failing)
    with pytest.raises(StoreError, match="durable"):
        store.commit([("a/lost", model_yaml("a/lost"))], 2)
    assert calls["n"] == 1 and store.broken and store.epoch == 1
    # still failing: the heal's own sync fails too, so the write is refused, not half-done
    with pytest.raises(StoreError, match="unusable"):
        store.commit([("a/two", model_yaml("a/two"))], 2)
    monkeypatch.setattr(fsmod.os, "fdatasync", real)
    store.commit([("a/two", model_yaml("a/two"))], 2)
    assert store.broken is None and store.epoch == 2
    store.close()
    again = _open(base)
    # the record whose fsync failed was never acknowledged and never comes back
    assert again.epoch == 2 and again.list_ids() == ["a/one", "a/two"]
    again.close()


def test_failed_checkpoint_rewrites_files_from_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed fsync a retried one may "succeed" over lost data: the files are
    rewritten from the journal before the journal is dropped."""
    base = tmp_path / "s"
    store = _open(base)
    store.commit([("a/one", model_yaml("a/one"))], 1)

    def failing(self: FileStore, dirty: Any) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(FileStore, "_sync_files", failing)
    assert store.checkpoint() is False
    assert store.broken and "checkpoint failed" in store.broken
    # what a lost write-back looks like: the file lost its content
    (base / "models" / "a__one.yaml").write_bytes(b"")
    monkeypatch.undo()
    assert store.heal() is True
    assert (base / "models" / "a__one.yaml").read_text() == model_yaml("a/one")
    store.commit([("a/two", model_yaml("a/two"))], 2)
    store.close()
    assert _open(base).epoch == 2


def test_interrupted_sync_rename_is_fatal_and_fails_liveness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "s"
    store = _open(base, "sync")
    store.commit([("a/one", model_yaml("a/one"))], 1)
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if str(dst).endswith(".yaml"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(fsmod.os, "replace", failing_replace)
    with pytest.raises(StoreError):
        store.commit([("a/two", model_yaml("a/two"))], 2)
    monkeypatch.undo()
    assert store.fatal and store.broken
    assert store.heal() is False
    with pytest.raises(StoreError, match="unusable"):
        store.commit([("a/two", model_yaml("a/two"))], 2)
    store.close()
    # the restart is the repair: the epoch is the one on disk (the bump happened first)
    again = _open(base, "sync")
    assert again.epoch == 2 and again.broken is None
    again.close()


async def test_fatal_store_fails_healthz(make_api: MakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    api = await make_api(admin_token=ADMIN, store_durability="sync")
    assert (await api.client.get("/healthz")).status == 200
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if str(dst).endswith(".yaml"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(fsmod.os, "replace", failing_replace)
    resp = await api.post(model_yaml("a/one"), token=ADMIN)
    monkeypatch.undo()
    assert resp.status == 503 and (await resp.json())["detail"]["error"] == "store_unavailable"
    h = await api.client.get("/healthz")
    assert h.status == 503
    body = await h.json()
    assert body["status"] == "error" and "restart" in body["detail"]
    assert (await api.client.get("/readyz")).status == 503


# --------------------------------------------------------------------------- epoch proofs


@pytest.mark.parametrize("durability", ["journal", "sync"])
def test_epoch_file_lower_than_model_epochs_is_repaired_with_a_warning(
    tmp_path: Path, durability: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "s"
    store = _open(base, durability)
    for i in range(1, 6):
        store.commit([(f"a/m{i}", model_yaml(f"a/m{i}"))], i)
    store.close()
    (base / "epoch").write_text("1")  # valid, but the true epoch was 5
    with caplog.at_level(logging.WARNING, logger="sie_operator.store.fs"):
        again = _open(base, durability)
    assert again.epoch == 5
    assert "repairing the epoch to 5" in caplog.text
    assert (base / "epoch").read_text() == "5"
    again.commit([("a/m6", model_yaml("a/m6"))], 6)  # the next write moves on from 5
    again.close()


def test_epoch_file_lower_than_the_journal_loses_to_the_journal(tmp_path: Path) -> None:
    """The crash case: the journal proves epoch 3, a rolled-back epoch file says 1."""
    base = tmp_path / "s"
    store = _open(base)
    for i in range(1, 4):
        store.commit([(f"a/m{i}", model_yaml(f"a/m{i}"))], i)
    # simulate the crash: drop the lock and the fds without checkpointing
    store._close_fds()
    store._release_lock()
    (base / "epoch").write_text("1")
    again = _open(base)
    assert again.epoch == 3 and (base / "epoch").read_text() == "3"
    again.close()


def test_an_epoch_file_higher_than_the_proofs_is_kept(tmp_path: Path) -> None:
    base = tmp_path / "s"
    store = _open(base)
    store.commit([("a/m", model_yaml("a/m"))], 1)
    store.close()
    (base / "epoch").write_text("40")  # e.g. SIE's own service wrote more without model-epochs
    again = _open(base)
    assert again.epoch == 40
    again.close()


# --------------------------------------------------------------------------- SIGKILL, both backends


def _crash_env(tmp_path: Path, backend: str, cluster: NatsCluster | None, stream: str) -> dict[str, str]:
    bundles, models = tmp_path / "fs" / "bundles", tmp_path / "fs" / "models"
    if not bundles.exists():
        write_layout(tmp_path / "fs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIE_")}
    env.update({"SIE_BUNDLES_DIR": str(bundles), "SIE_MODELS_DIR": str(models), "SIE_NO_UVLOOP": "1"})
    if backend == "directory":
        env["SIE_CONFIG_STORE_DIR"] = str(tmp_path / "store")
    else:
        assert cluster is not None
        env.update(
            {
                "SIE_CONFIG_STORE_DIR": f"jetstream://{stream}",
                "SIE_CONFIG_STORE_REPLICAS": "3",
                "SIE_NATS_URL": cluster.urls,
            }
        )
    return env


def _start_config_api(tmp_path: Path, env: dict[str, str], port: int, name: str) -> ServerProcess:
    proc = ServerProcess(
        sie_operator_argv("config-api", "--host", "127.0.0.1", "--port", str(port)),
        name=name,
        log_dir=tmp_path,
        env=env,
    ).start()
    proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
    return proc


@pytest.fixture(params=["directory", "jetstream"])
def backend(request: pytest.FixtureRequest) -> tuple[str, NatsCluster | None]:
    if request.param == "jetstream":
        return "jetstream", request.getfixturevalue("nats_cluster")
    return "directory", None


@pytest.mark.parametrize("clients", [1, 16])
async def test_sigkill_during_writes_loses_no_acknowledged_write(
    tmp_path: Path, backend: tuple[str, NatsCluster | None], clients: int
) -> None:
    """SIGKILL the config-api process while writes are in flight (sequential, then 16
    clients): after a restart every write that was answered 2xx is served, with distinct
    epochs, and the epoch is at least the number of acknowledged writes."""
    kind, cluster = backend
    env = _crash_env(tmp_path, kind, cluster, stream_name())
    port = free_port()
    proc = _start_config_api(tmp_path, env, port, "cfg-a")
    base = f"http://127.0.0.1:{port}"
    acked: list[str] = []
    enough = asyncio.Event()
    counter = iter(range(10**6))

    async def writer(session: aiohttp.ClientSession) -> None:
        while True:
            mid = f"crash/m{next(counter):04d}"
            try:
                async with session.post(f"{base}/v1/configs/models", data=model_yaml(mid)) as r:
                    if r.status in (200, 201):
                        acked.append(mid)
                        if len(acked) >= 30:
                            enough.set()
            except (TimeoutError, aiohttp.ClientError):
                return

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            tasks = [asyncio.ensure_future(writer(session)) for _ in range(clients)]
            await asyncio.wait_for(enough.wait(), 30)
            proc.signal(signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*tasks), 20)
        proc.stop()
        proc = _start_config_api(tmp_path, env, port, "cfg-b")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/v1/configs/export") as r:
                export = await r.json()
            # the store moves on from where it was: the next write gets the next epoch
            async with session.post(f"{base}/v1/configs/models", data=model_yaml("after/crash")) as r:
                assert r.status == 201
            async with session.get(f"{base}/v1/configs/epoch") as r:
                assert (await r.json())["epoch"] == export["epoch"] + 1
    finally:
        proc.stop()
    served = {m["model_id"] for m in export["models"]}
    assert set(acked) <= served, sorted(set(acked) - served)
    assert export["epoch"] >= len(acked) >= 30
