"""FileStore on a real filesystem: layout, atomicity, strict epoch, journal recovery."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from cfgsvc_helpers import model_yaml

from sie_operator.catalog import yamlio
from sie_operator.store import FileStore, StoreCorrupt, StoreError


def _open(path: Path, durability: str = "journal") -> FileStore:
    store = FileStore(path, durability=durability)  # type: ignore[arg-type]
    store.open()
    return store


@pytest.mark.parametrize("durability", ["journal", "sync"])
def test_commit_is_visible_at_once_durable_and_in_sie_layout(tmp_path: Path, durability: str) -> None:
    store = _open(tmp_path / "s", durability)
    assert store.epoch == 0
    text = model_yaml("acme/bert")
    store.commit([("acme/bert", text)], 1)
    path = tmp_path / "s" / "models" / "acme__bert.yaml"
    assert path.read_text() == text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "s" / "epoch").read_text() == "1"  # bare integer, no newline
    store.commit([("acme/bert", text + "description: x\n"), ("other/m", model_yaml("other/m"))], 3)
    assert (tmp_path / "s" / "epoch").read_text() == "3"
    store.close()
    # a clean stop leaves SIE's layout (epoch, models/) plus our per-model epoch index
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if not p.name.startswith(".")) == [
        "epoch",
        "model-epochs",
        "models",
    ]
    again = _open(tmp_path / "s", durability)
    assert again.epoch == 3
    assert [(m.model_id, m.text) for m in again.load_all()] == [
        ("acme/bert", text + "description: x\n"),
        ("other/m", model_yaml("other/m")),
    ]
    assert again.list_ids() == ["acme/bert", "other/m"]
    again.close()


def test_epoch_must_move_forward(tmp_path: Path) -> None:
    store = _open(tmp_path / "s")
    store.commit([("a/m", model_yaml("a/m"))], 5)
    for bad in (5, 4):
        with pytest.raises(StoreError, match="does not follow"):
            store.commit([("a/m", model_yaml("a/m"))], bad)
    store.close()


def test_ids_that_cannot_be_stored_unambiguously_are_refused(tmp_path: Path) -> None:
    store = _open(tmp_path / "s")
    for bad in ("a__b", "org_/m", "x/../y"):
        with pytest.raises(StoreError, match="cannot be stored"):
            store.commit([(bad, "sie_id: x\n")], 1)
    assert store.epoch == 0
    assert list((tmp_path / "s" / "models").iterdir()) == []
    store.close()


@pytest.mark.parametrize("content", [b"abc", b"", b"-1", b"1.5", b"\xff\xfe", b"99999999999999999999999"])
def test_corrupt_epoch_file_stops_startup(tmp_path: Path, content: bytes) -> None:
    base = tmp_path / "s"
    (base / "models").mkdir(parents=True)
    (base / "epoch").write_bytes(content)
    with pytest.raises(StoreCorrupt, match="never go backwards") as err:
        _open(base)
    assert str(base / "epoch") in str(err.value)
    assert (base / "epoch").read_bytes() == content  # left for the operator to inspect
    # the lock was released: fixing the file lets the store open
    (base / "epoch").write_text("7\n")
    store = _open(base)
    assert store.epoch == 7
    store.commit([("a/m", model_yaml("a/m"))], 8)
    assert (base / "epoch").read_text() == "8"
    store.close()


def test_missing_epoch_with_models_present_stops_startup(tmp_path: Path) -> None:
    base = tmp_path / "s"
    (base / "models").mkdir(parents=True)
    (base / "models" / "a__m.yaml").write_text(model_yaml("a/m"))
    with pytest.raises(StoreCorrupt, match="missing"):
        _open(base)


def test_stale_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    base = tmp_path / "s"
    (base / "models").mkdir(parents=True)
    (base / "models" / ".a__m.yaml.123.0.tmp").write_text("half")
    (base / ".epoch.55.tmp").write_text("9")
    store = _open(base)
    assert not list(base.rglob("*.tmp"))
    store.close()


def test_one_owner_per_store_directory(tmp_path: Path) -> None:
    first = _open(tmp_path / "s")
    with pytest.raises(StoreError, match="in use by another process"):
        _open(tmp_path / "s")
    first.close()
    _open(tmp_path / "s").close()


def test_readers_never_see_a_partial_model_file(tmp_path: Path) -> None:
    store = _open(tmp_path / "s")
    path = tmp_path / "s" / "models" / "a__m.yaml"
    versions = [model_yaml("a/m", description="x" * (i * 997 % 5000)) for i in range(60)]
    store.commit([("a/m", versions[0])], 1)
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(path.read_text())

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i, text in enumerate(versions[1:], start=2):
            store.commit([("a/m", text)], i)
    finally:
        stop.set()
        t.join()
    store.close()
    assert seen <= set(versions)


_CRASHER = textwrap.dedent(
    """
    import os, sys
    from sie_operator.store import FileStore
    store = FileStore(sys.argv[1])
    store.open()
    for i in range(1, 4):
        store.commit([(f"a/m{i}", f"sie_id: a/m{i}\\nn: {i}\\n")], i)
    os._exit(0)  # no close(), no checkpoint: like a crash right after the last acknowledged commit
    """
)


def _crash_after_three_commits(base: Path) -> None:
    subprocess.run([sys.executable, "-c", _CRASHER, str(base)], check=True, timeout=30)
    assert list((base / "wal").glob("*.log")), "the journal must survive a crash"


def test_journal_replays_acknowledged_writes_whose_files_were_lost(tmp_path: Path) -> None:
    base = tmp_path / "s"
    _crash_after_three_commits(base)
    # what a power cut can do to files that were renamed but not yet fsynced
    (base / "models" / "a__m2.yaml").write_bytes(b"")
    (base / "models" / "a__m3.yaml").unlink()
    (base / "epoch").write_bytes(b"\0")
    store = _open(base)
    assert store.epoch == 3
    assert {m.model_id: m.text for m in store.load_all()} == {
        f"a/m{i}": f"sie_id: a/m{i}\nn: {i}\n" for i in (1, 2, 3)
    }
    assert (base / "epoch").read_text() == "3"
    assert len(list((base / "wal").glob("*.log"))) == 1  # replayed segments are gone; a fresh one is open
    store.close()


def test_torn_last_record_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = tmp_path / "s"
    _crash_after_three_commits(base)
    last = sorted((base / "wal").glob("*.log"))[-1]
    with open(last, "ab") as f:
        f.write(b"SIEJ\x00\x00\x01\x00\x12\x34")  # a record header whose payload never made it
    with caplog.at_level(logging.WARNING):
        store = _open(base)
    assert store.epoch == 3
    assert "incomplete last record" in caplog.text
    store.close()


def test_damage_inside_the_journal_stops_startup(tmp_path: Path) -> None:
    base = tmp_path / "s"
    _crash_after_three_commits(base)
    last = sorted((base / "wal").glob("*.log"))[-1]
    data = bytearray(last.read_bytes())
    # flip a byte in the payload of the second record (the base record comes first)
    hdr = 12
    first_len = int.from_bytes(data[4:8], "big")
    second = hdr + first_len
    data[second + hdr + 3] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="corrupt at byte"):
        _open(base)


def test_checkpoint_syncs_files_and_drops_the_journal(tmp_path: Path) -> None:
    base = tmp_path / "s"
    store = _open(base)
    store.commit([("a/m", model_yaml("a/m"))], 1)
    segments_before = sorted((base / "wal").glob("*.log"))
    assert store.needs_checkpoint
    assert store.checkpoint()
    segments_after = sorted((base / "wal").glob("*.log"))
    assert segments_after and not set(segments_before) & set(segments_after)
    assert not store.needs_checkpoint
    assert not store.checkpoint()  # nothing new
    store.commit([("a/n", model_yaml("a/n"))], 2)
    store.close()
    assert not (base / "wal").exists()
    again = _open(base)
    assert again.epoch == 2 and again.list_ids() == ["a/m", "a/n"]
    again.close()


def test_sync_mode_keeps_no_journal(tmp_path: Path) -> None:
    base = tmp_path / "s"
    store = _open(base, "sync")
    store.commit([("a/m", model_yaml("a/m"))], 1)
    assert not (base / "wal").exists()
    store.close()
    # a journal left by the other mode is still replayed
    _crash_after_three_commits(tmp_path / "j")
    (tmp_path / "j" / "models" / "a__m3.yaml").unlink()
    s2 = _open(tmp_path / "j", "sync")
    assert s2.epoch == 3 and "a/m3" in s2.list_ids()
    s2.close()


def test_load_all_refuses_files_it_cannot_map_to_an_id(tmp_path: Path) -> None:
    base = tmp_path / "s"
    store = _open(base)
    store.commit([("a/m", model_yaml("a/m"))], 1)
    (base / "models" / "org___m.yaml").write_text(model_yaml("org_/m"))
    with pytest.raises(StoreCorrupt, match=r"org___m\.yaml"):
        store.load_all()
    assert store.list_ids() == ["a/m"]  # listing skips it
    store.close()


def test_stored_text_round_trips(tmp_path: Path) -> None:
    store = _open(tmp_path / "s")
    text = 'sie_id: a/m\nnote: "caf\\xE9 \\u2603"\nprofiles: {}\n'
    store.commit([("a/m", text)], 1)
    assert store.read_model("a/m") == text
    assert store.read_model("a/none") is None
    assert yamlio.load(store.read_model("a/m") or "")["note"] == "café ☃"
    store.close()


def test_unwritable_base_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create store directory"):
        _open(target / "store")
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(StoreError):
            _open(ro / "store")


@pytest.mark.parametrize("durability", ["journal", "sync"])
def test_each_model_keeps_the_epoch_of_its_own_write_across_restarts(tmp_path: Path, durability: str) -> None:
    """Status reports the epoch that made a model durable; a restart must not move it."""
    base = tmp_path / "s"
    store = _open(base, durability)
    store.commit([("a/one", "sie_id: a/one\n")], 1)
    store.commit([("a/two", "sie_id: a/two\n")], 2)
    store.commit([("a/one", "sie_id: a/one\nx: 1\n")], 3)
    store.commit([("a/three", "sie_id: a/three\n")], 4)
    store.close()
    again = _open(base, durability)
    assert {m.model_id: m.epoch for m in again.load_all()} == {"a/one": 3, "a/two": 2, "a/three": 4}
    again.close()


def test_per_model_epochs_survive_a_crash_through_the_journal(tmp_path: Path) -> None:
    base = tmp_path / "s"
    _crash_after_three_commits(base)
    store = _open(base)
    assert {m.model_id: m.epoch for m in store.load_all()} == {"a/m1": 1, "a/m2": 2, "a/m3": 3}
    store.close()


def test_a_store_written_by_sie_has_no_per_model_epochs(tmp_path: Path) -> None:
    base = tmp_path / "s"
    (base / "models").mkdir(parents=True)
    (base / "models" / "a__m.yaml").write_text("sie_id: a/m\n")
    (base / "epoch").write_text("7")
    store = _open(base)
    assert [(m.model_id, m.epoch) for m in store.load_all()] == [("a/m", None)]
    store.close()


@pytest.mark.parametrize("crash", [False, True])
def test_each_write_of_a_batch_keeps_its_own_epoch(tmp_path: Path, crash: bool) -> None:
    """A group commit of k writes at epoch e gives write i epoch e-k+1+i, as the service
    answered (and as the JetStream store records): a restart, clean or through the journal,
    reports the same per-model epochs."""
    base = tmp_path / "s"
    store = _open(base)
    store.commit([("b/one", "sie_id: b/one\n")], 1)
    store.commit([("b/two", "sie_id: b/two\n"), ("b/three", "sie_id: b/three\n"), ("b/one", "x: 1\n")], 4)
    if crash:
        store._close_fds()
        store._release_lock()
    else:
        store.close()
    again = _open(base)
    assert {m.model_id: m.epoch for m in again.load_all()} == {"b/one": 4, "b/two": 2, "b/three": 3}
    assert again.epoch == 4
    again.close()
