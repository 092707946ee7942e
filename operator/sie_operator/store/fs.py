"""Durable model store on the local filesystem, in the SIE config service's layout.

Layout (readable by SIE's own store code)::

    <base>/models/<id with / as __>.yaml   one file per model, the full merged document
    <base>/epoch                           a bare decimal integer, no newline
    <base>/wal/<seq>.log                   our write-ahead journal (absent after a clean stop)
    <base>/model-epochs                    ours: "<epoch> <model id>" per write, last line wins
    <base>/.lock                           flock held while a process owns the store

Why a journal: making one model file and the epoch durable the textbook way (temp file,
fsync, rename, directory fsync, twice) costs ~1 ms on a typical disk, which caps a
sequential writer near 500 writes/s. In the default ``journal`` mode a commit appends one
checksummed record (every model text of the commit plus the new epoch) to the journal and
``fdatasync``s it (~0.15 ms): that is the durability point. The model files are then
replaced atomically (temp file + rename) and the epoch file rewritten in place, so readers
of the directory see the new state at once, and a background :meth:`FileStore.checkpoint` makes them durable
(an fsync per file, then the directories) before dropping journal segments. On
startup any surviving journal is replayed into the files, so the directory is always
exactly the SIE layout once the store is open.

The ``sync`` mode skips the journal and fsyncs every file and directory before a commit
returns (epoch file first: a crash can then leave an epoch bump without content, which is
harmless, but never content without its epoch bump).

The epoch never goes backwards: a corrupt or missing epoch file (with models present)
stops startup with a message saying how to repair it, instead of silently restarting at 0.
An epoch file holding a valid but smaller number than ``model-epochs`` proves (a line
there is written only once its epoch is durable) is repaired to the proven epoch with a
warning; a surviving journal is replayed and wins over the file in the same way.

Faults heal: a failed write (ENOSPC, EIO between journal and model files, a failed
fsync...) marks the store ``broken`` (readiness fails, writes get a 503) and every later
write, and a background retry, first re-opens it: cut the unacknowledged journal record
off, replay the journal into fresh files, re-check the epoch against what this process
acknowledged, start a new segment. Once the cause is gone the store is usable again with
no restart. Only when that check cannot pass (the disk lost acknowledged state, or a
``sync``-mode rename was interrupted half-way) is the store ``fatal``: the liveness probe
then fails so the kubelet restarts the process, whose startup recovery is the repair.
Why ``model-epochs``: status reports the epoch of the write that made a model's content
durable; without recording it, a restart could only say "some epoch up to the current
one", and every ModelConfig's status would change on each operator restart. SIE's own
service ignores the file, and a store without it (written by SIE) falls back to the
store epoch for each model.

All methods block; the service calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from sie_operator.catalog.ids import InvalidModelId, filename_to_id, id_to_filename, validate_model_id

log = logging.getLogger(__name__)

Durability = Literal["journal", "sync"]
EPOCH_FILE = "epoch"
MODELS_DIR = "models"
WAL_DIR = "wal"
LOCK_FILE = ".lock"
MODEL_EPOCHS_FILE = "model-epochs"
MAX_EPOCH = 2**63 - 1
_HEADER = struct.Struct(">4sII")  # magic, payload length, crc32(payload)
_MAGIC = b"SIEJ"
_MAX_RECORD = 1 << 30
_tmp_counter = itertools.count()


class StoreError(Exception):
    """The store cannot do what was asked; ``str(exc)`` is user-facing."""


class StoreCorrupt(StoreError):
    """On-disk state that must not be used as is (startup refuses to continue)."""


@dataclass(frozen=True)
class StoredModel:
    model_id: str
    path: Path
    text: str
    epoch: int | None = None  # epoch of the write that stored this text, if recorded


# -- low-level helpers ------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _atomic_write(path: Path, data: bytes, *, fsync: bool, rename: bool = True) -> Path:
    """Write ``data`` to a temp file next to ``path`` (mode 0600) and rename it over ``path``.

    With ``rename=False`` the temp file is left in place and returned, so several files
    can be fsynced first and renamed in a chosen order.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_tmp_counter)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if rename:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _encode_record(obj: dict[str, Any]) -> bytes:
    payload = orjson.dumps(obj)
    return _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode_records(data: bytes, name: str, *, allow_torn_tail: bool) -> list[dict[str, Any]]:
    """Records of one journal segment.

    A damaged record is tolerated only at the very end of the newest segment (it runs
    past the end of the file, ends exactly there, or is followed by nothing but zeros):
    that is a commit whose fdatasync never returned, so it was never acknowledged.
    Damage anywhere else means the journal itself is corrupt.
    """
    out: list[dict[str, Any]] = []
    pos = 0
    size = len(data)
    while pos < size:
        problem = ""
        end = size
        if size - pos < _HEADER.size:
            problem = "truncated record header"
        else:
            magic, length, crc = _HEADER.unpack_from(data, pos)
            if magic != _MAGIC or length > _MAX_RECORD:
                problem = "bad record header"
                end = pos  # its extent is unknown: only a zero-filled tail counts as torn
            elif pos + _HEADER.size + length > size:
                problem = "truncated record"
            else:
                end = pos + _HEADER.size + length
                payload = data[pos + _HEADER.size : end]
                rec: Any = None
                if zlib.crc32(payload) != crc:
                    problem = "checksum mismatch"
                else:
                    try:
                        rec = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        rec = None
                    if not isinstance(rec, dict):
                        problem = "undecodable record"
                if not problem:
                    out.append(rec)
                    pos = end
                    continue
        torn = allow_torn_tail and (end >= size or not data[pos:].strip(b"\0"))
        if torn:
            log.warning(
                "journal %s: dropping an incomplete last record at byte %d (%s); it belongs to a "
                "commit that was never acknowledged",
                name,
                pos,
                problem,
            )
            return out
        raise StoreCorrupt(
            f"journal file {name} is corrupt at byte {pos} ({problem}); the store cannot be "
            "recovered automatically. Move the file away to start without it (writes recorded "
            "only there would be lost)."
        )
    return out


# -- the store --------------------------------------------------------------------------


class FileStore:
    """One process's durable model store. Not shared between processes (a flock enforces it)."""

    def __init__(self, base: Path | str, *, durability: Durability = "journal") -> None:
        self.base = Path(base)
        self.models_dir = self.base / MODELS_DIR
        self.wal_dir = self.base / WAL_DIR
        self.epoch_path = self.base / EPOCH_FILE
        self.model_epochs_path = self.base / MODEL_EPOCHS_FILE
        self.model_epochs: dict[str, int] = {}
        self._epoch_lines: list[str] = []  # journal mode: recorded at the next checkpoint
        self.durability: Durability = durability
        self.epoch = 0
        self.opened = False
        self.broken: str | None = None  # set after a failure that makes further writes unsafe
        self.fatal: str | None = None  # broken in a way only a restart can repair
        self._truncate_to: int | None = None  # journal size before an unacknowledged record
        self._lock = threading.Lock()  # journal, segment rotation, dirty set
        self._checkpoint_lock = threading.Lock()  # one checkpoint at a time, start to finish
        self._lock_fd: int | None = None
        self._seg_fd: int | None = None
        self._epoch_fd: int | None = None  # journal mode: the epoch file, rewritten in place
        self._seg_path: Path | None = None
        self._seg_seq = 0
        self._dirty: set[Path] = set()  # files replaced since the last checkpoint
        self._to_delete: list[Path] = []  # closed segments waiting for a checkpoint

    # -- open / recovery -----------------------------------------------------------------
    def open(self) -> int:
        """Validate and lock the directory, replay a leftover journal, read the epoch strictly."""
        if self.opened:
            return self.epoch
        try:
            self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.models_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {self.base}: {exc.strerror or exc}") from exc
        if not os.access(self.base, os.W_OK | os.X_OK) or not os.access(self.models_dir, os.W_OK | os.X_OK):
            raise StoreError(f"store directory {self.base} is not writable")
        self._acquire_lock()
        try:
            self._clean_tmp()
            self._load_model_epochs()
            segments = self._segments()
            if segments:
                self.epoch = self._recover(segments)
            else:
                self.epoch = self._read_epoch_strict()
            self._repair_epoch_from_proofs()
            if self.durability == "journal":
                self.wal_dir.mkdir(mode=0o700, exist_ok=True)
                self._seg_seq = 0
                self._open_segment()
                self._open_epoch_file()
        except BaseException:
            self._close_fds()
            self._release_lock()
            raise
        self.opened = True
        return self.epoch

    def _acquire_lock(self) -> None:
        path = self.base / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(
                    f"store directory {self.base} is in use by another process (only one writer may own it)"
                ) from exc
            raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def _clean_tmp(self) -> None:
        """Temp files are left only by a crash mid-write; none was ever renamed into place."""
        for d in (self.base, self.models_dir, self.wal_dir):
            if not d.is_dir():
                continue
            for p in d.glob(".*.tmp"):
                try:
                    p.unlink()
                    log.info("removed stale temporary file %s", p)
                except OSError as exc:
                    log.warning("cannot remove stale temporary file %s: %s", p, exc)

    def _segments(self) -> list[tuple[int, Path]]:
        if not self.wal_dir.is_dir():
            return []
        out = []
        for p in self.wal_dir.glob("*.log"):
            if p.stem.isdigit():
                out.append((int(p.stem), p))
        return sorted(out)

    def _parse_epoch(self, raw: bytes) -> int:
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            text = ""
            ok = False
        else:
            ok = text.isdigit() and len(text) <= 19
        if not ok or int(text) > MAX_EPOCH:
            shown = raw[:40].decode("ascii", "backslashreplace")
            raise StoreCorrupt(
                f"epoch file {self.epoch_path} is corrupt (expected a decimal integer, found {shown!r}); "
                "refusing to start because the epoch must never go backwards. Write the last epoch "
                f"clients have seen into it (e.g. `printf 42 > {self.epoch_path}`) and start again."
            )
        return int(text)

    def _read_epoch_strict(self) -> int:
        try:
            raw = self.epoch_path.read_bytes()
        except FileNotFoundError:
            if any(self.models_dir.glob("*.yaml")):
                raise StoreCorrupt(
                    f"epoch file {self.epoch_path} is missing but {self.models_dir} holds models; "
                    "refusing to start because the epoch would restart at 0 and go backwards. Write the "
                    f"last epoch clients have seen into it (e.g. `printf 42 > {self.epoch_path}`)."
                ) from None
            return 0
        except OSError as exc:
            raise StoreCorrupt(f"cannot read epoch file {self.epoch_path}: {exc.strerror or exc}") from exc
        return self._parse_epoch(raw)

    def _repair_epoch_from_proofs(self) -> None:
        """Never step back below what ``model-epochs`` proves (repair, with a warning).

        A line there is appended only after its epoch is durable, so its largest epoch is a
        floor for the true epoch; an epoch file below it was rolled back or overwritten
        (a restored backup, a hand edit). Using the floor keeps gateways from seeing the
        epoch go backwards; writing it makes the repair durable."""
        proof = max(self.model_epochs.values(), default=0)
        if proof <= self.epoch:
            return
        log.warning(
            "epoch file %s says %d but %s records writes up to epoch %d; repairing the epoch to %d "
            "(it must never go backwards)",
            self.epoch_path,
            self.epoch,
            self.model_epochs_path,
            proof,
            proof,
        )
        self.epoch = proof
        try:
            _atomic_write(self.epoch_path, str(proof).encode("ascii"), fsync=True)
            _fsync_dir(self.base)
        except OSError as exc:
            raise StoreError(f"cannot repair epoch file {self.epoch_path}: {exc.strerror or exc}") from exc

    def _recover(self, segments: list[tuple[int, Path]]) -> int:
        """Replay journal segments left by a crash (or a failed checkpoint) into the files."""
        records: list[dict[str, Any]] = []
        for i, (_, path) in enumerate(segments):
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise StoreCorrupt(f"cannot read journal file {path}: {exc.strerror or exc}") from exc
            records.extend(_decode_records(data, str(path), allow_torn_tail=i == len(segments) - 1))
        epoch = 0
        latest: dict[str, str] = {}
        written_at: dict[str, int] = {}
        for rec in records:
            e = rec.get("epoch", rec.get("base"))
            if not isinstance(e, int) or e < 0:
                raise StoreCorrupt(f"journal in {self.wal_dir} holds a record without a valid epoch")
            epoch = max(epoch, e)
            items = rec.get("models") or []
            for i, item in enumerate(items):
                if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                    raise StoreCorrupt(f"journal in {self.wal_dir} holds a malformed model entry")
                latest[item[0]] = item[1]
                if "epoch" in rec:
                    written_at[item[0]] = max(0, e - len(items) + 1 + i)  # write i's own epoch
        # The epoch file is authoritative only when no journal survives; here it may be a
        # half-written replacement, so it only counts if it parses.
        try:
            epoch = max(epoch, self._parse_epoch(self.epoch_path.read_bytes()))
        except FileNotFoundError:
            pass
        except (OSError, StoreCorrupt) as exc:
            log.warning(
                "epoch file unreadable during journal recovery (%s); rewriting it from the journal", exc
            )
        try:
            for model_id, text in latest.items():
                _atomic_write(self._model_path(model_id), text.encode("utf-8"), fsync=True)
            _atomic_write(self.epoch_path, str(epoch).encode("ascii"), fsync=True)
            self._append_model_epochs([f"{e} {mid}\n" for mid, e in written_at.items()])
            _fsync_dir(self.models_dir)
            _fsync_dir(self.base)
            for _, path in segments:
                path.unlink()
            _fsync_dir(self.wal_dir)
        except OSError as exc:
            raise StoreError(f"cannot replay the journal in {self.wal_dir}: {exc.strerror or exc}") from exc
        if latest and not self.broken:  # a heal says so itself
            log.warning(
                "replayed %d model file(s) and epoch %d from the journal (unclean shutdown)",
                len(latest),
                epoch,
            )
        return epoch

    def _open_epoch_file(self) -> None:
        """Journal mode rewrites the epoch in place (no rename: replacing a file by rename
        makes ext4 flush it, ~0.15 ms). That is safe because the journal, not the file, is
        the durability point until a checkpoint syncs it, and the epoch only grows, so a
        rewrite never leaves stale digits. The file is first put in canonical form."""
        text = str(self.epoch).encode("ascii")
        try:
            current = self.epoch_path.read_bytes()
        except FileNotFoundError:
            current = None
        if current != text:
            _atomic_write(self.epoch_path, text, fsync=True)
            _fsync_dir(self.base)
        self._epoch_fd = os.open(self.epoch_path, os.O_WRONLY | os.O_CLOEXEC)

    def _load_model_epochs(self) -> None:
        """Read the per-model epoch index; compact it when mostly superseded lines."""
        try:
            raw = self.model_epochs_path.read_text("utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            log.warning(
                "ignoring unreadable %s (%s): models fall back to the store epoch",
                self.model_epochs_path,
                exc,
            )
            return
        lines = raw.splitlines()
        for line in lines:
            epoch_s, _, mid = line.partition(" ")
            if epoch_s.isdigit() and len(epoch_s) <= 19 and mid and int(epoch_s) <= MAX_EPOCH:
                self.model_epochs[mid] = int(epoch_s)
            # a torn last line (crash mid-append) is simply not recorded
        if len(lines) > 2 * len(self.model_epochs) + 64:
            text = "".join(f"{e} {mid}\n" for mid, e in sorted(self.model_epochs.items()))
            try:
                _atomic_write(self.model_epochs_path, text.encode("utf-8"), fsync=True)
                _fsync_dir(self.base)
            except OSError as exc:
                log.warning("cannot compact %s: %s", self.model_epochs_path, exc)

    def _append_model_epochs(self, lines: Sequence[str]) -> None:
        """Append and fsync index lines (an append to a new file also needs the dir fsync)."""
        if not lines:
            return
        new = not self.model_epochs_path.exists()
        fd = os.open(self.model_epochs_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, "".join(lines).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.base)
        for line in lines:
            epoch_s, _, mid = line.rstrip("\n").partition(" ")
            self.model_epochs[mid] = int(epoch_s)

    def _close_fds(self) -> None:
        for name in ("_seg_fd", "_epoch_fd"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)

    def _open_segment(self) -> None:
        """Start a new journal segment whose first record is the current epoch.

        Its directory entry is fsynced before any commit relies on it, since fdatasync on
        the file alone does not make a new file's name durable.
        """
        self._seg_seq += 1
        path = self.wal_dir / f"{self._seg_seq:012d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, _encode_record({"base": self.epoch}))
            os.fdatasync(fd)
            _fsync_dir(self.wal_dir)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._seg_fd, self._seg_path = fd, path

    # -- reads ---------------------------------------------------------------------------
    def _model_path(self, model_id: str) -> Path:
        try:
            validate_model_id(model_id)
        except InvalidModelId as exc:
            raise StoreError(f"model id {model_id!r} cannot be stored: {exc}") from exc
        return self.models_dir / f"{id_to_filename(model_id)}.yaml"

    def list_ids(self) -> list[str]:
        """Ids of the stored models (file names that do not map back to an id are skipped)."""
        out = []
        for p in self.models_dir.glob("*.yaml"):
            mid = filename_to_id(p.stem)
            if id_to_filename(mid) == p.stem:
                try:
                    validate_model_id(mid)
                except InvalidModelId:
                    continue
                out.append(mid)
        return sorted(out)

    def read_model(self, model_id: str) -> str | None:
        try:
            return self._model_path(model_id).read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"cannot read stored model {model_id!r}: {exc}") from exc

    def load_all(self) -> list[StoredModel]:
        """Every stored model, in id order. An unreadable or foreign file is an error, not a
        skip: a model that silently disappears at restore would be acknowledged data lost."""
        out = []
        for p in sorted(self.models_dir.glob("*.yaml")):
            mid = filename_to_id(p.stem)
            try:
                validate_model_id(mid)
                if id_to_filename(mid) != p.stem:
                    raise InvalidModelId("the file name does not map back to a model id")
            except InvalidModelId as exc:
                raise StoreCorrupt(
                    f"stored model file {p} has a name this service cannot map to a model id ({exc}); "
                    "move it out of the store directory"
                ) from exc
            try:
                text = p.read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise StoreCorrupt(f"cannot read stored model file {p}: {exc}") from exc
            out.append(StoredModel(mid, p, text, self.model_epochs.get(mid)))
        return sorted(out, key=lambda m: m.model_id)

    # -- writes --------------------------------------------------------------------------
    def commit(self, writes: Sequence[tuple[str, str]], epoch: int) -> None:
        """Store the given model texts and the new epoch; durable when this returns.

        Raises StoreError if nothing was committed (the caller must then leave its state
        unchanged). ``epoch`` must be greater than the current one. Write ``i`` is recorded
        with epoch ``epoch - len(writes) + 1 + i`` (the service gives each write of a batch
        its own epoch), so a restart reports the same per-model epochs as before it.
        """
        if not self.opened:
            raise StoreError("store is not open")
        if epoch <= self.epoch or epoch > MAX_EPOCH:
            raise StoreError(f"epoch {epoch} does not follow the stored epoch {self.epoch}")
        paths = [(self._model_path(mid), text.encode("utf-8")) for mid, text in writes]
        first = epoch - len(writes) + 1
        own = [(mid, max(self.epoch + 1, first + i)) for i, (mid, _) in enumerate(writes)]
        if self.broken:
            self.heal()  # the cause may be gone (space freed): re-open before refusing
        with self._lock:
            if self.broken:
                raise StoreError(f"store unusable: {self.broken}")
            if self.durability == "journal":
                self._commit_journal(writes, paths, epoch)
                self._epoch_lines.extend(f"{e} {mid}\n" for mid, e in own)
                for mid, e in own:
                    self.model_epochs[mid] = e
            else:
                self._commit_sync(paths, epoch)
                try:
                    self._append_model_epochs([f"{e} {mid}\n" for mid, e in own])
                except OSError as exc:  # content and epoch are durable; only the index lags
                    log.warning("cannot record per-model epochs in %s: %s", self.model_epochs_path, exc)
            self.epoch = epoch

    def _commit_journal(
        self, writes: Sequence[tuple[str, str]], paths: list[tuple[Path, bytes]], epoch: int
    ) -> None:
        fd = self._seg_fd
        if fd is None:
            raise StoreError("journal is not open")
        record = _encode_record({"epoch": epoch, "models": [[mid, text] for mid, text in writes]})
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, record)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError as exc2:
                self._truncate_to = size
                self.broken = f"journal write failed and could not be undone: {exc2.strerror or exc2}"
                log.error("store: %s (retrying in the background)", self.broken)
            raise StoreError(f"cannot write the store journal: {exc.strerror or exc}") from exc
        try:
            os.fdatasync(fd)
        except OSError as exc:
            # After a failed fsync the kernel's view of the file is unknown ("fsyncgate"):
            # stop writing; healing cuts this unacknowledged record off, syncs, and replays
            # the journal into fresh files.
            self._truncate_to = size
            self.broken = f"journal fdatasync failed: {exc.strerror or exc}"
            log.error("store: %s (retrying in the background)", self.broken)
            raise StoreError(f"cannot make the store journal durable: {exc.strerror or exc}") from exc
        # Durable from here on. Publish the files for readers of the directory.
        try:
            for path, data in paths:
                _atomic_write(path, data, fsync=False)
                self._dirty.add(path)
            if self._epoch_fd is None:
                raise OSError(errno.EBADF, "epoch file is not open")
            os.pwrite(self._epoch_fd, str(epoch).encode("ascii"), 0)
            self._dirty.add(self.epoch_path)
        except OSError as exc:
            # The commit is durable in the journal; the files are repaired at the next start.
            # Checkpoints must stop, or they would drop the only good copy.
            self.broken = f"cannot update store files after a durable journal write: {exc.strerror or exc}"
            log.error("store: %s (repaired from the journal once the cause is gone)", self.broken)

    def _commit_sync(self, paths: list[tuple[Path, bytes]], epoch: int) -> None:
        tmps: list[tuple[Path, Path]] = []
        try:
            for path, data in paths:
                tmps.append((_atomic_write(path, data, fsync=True, rename=False), path))
            epoch_tmp = _atomic_write(self.epoch_path, str(epoch).encode("ascii"), fsync=True, rename=False)
        except OSError as exc:
            for tmp, _ in tmps:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise StoreError(f"cannot write the store: {exc.strerror or exc}") from exc
        try:
            os.replace(epoch_tmp, self.epoch_path)
            _fsync_dir(self.base)
            for tmp, path in tmps:
                os.replace(tmp, path)
            _fsync_dir(self.models_dir)
        except OSError as exc:
            # Some renames happened, some did not, and only what reached the disk is known:
            # a restart's startup (strict epoch, restore) is the repair.
            self.broken = self.fatal = f"store update interrupted: {exc.strerror or exc}"
            log.error("store: %s (restart needed: the liveness probe now fails)", self.broken)
            raise StoreError(f"cannot write the store: {exc.strerror or exc}") from exc

    # -- healing -----------------------------------------------------------------------
    def heal(self) -> bool:
        """Try to leave the broken state; True when the store is usable again.

        Safe to call at any time from any thread (it takes both locks, checkpoint lock
        first, like a checkpoint). Never raises: a failure leaves the store broken (retry
        later) or, when what is on disk contradicts what was acknowledged, fatal."""
        with self._checkpoint_lock, self._lock:
            if not self.broken:
                return True
            if self.fatal or not self.opened:
                return False
            cause = self.broken.split(" (still failing: ")[0]
            try:
                self._reopen()
            except StoreCorrupt as exc:
                self.broken = self.fatal = str(exc)
                log.error("store cannot heal itself, restart needed (liveness fails): %s", exc)
                return False
            except (OSError, StoreError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self.broken = f"{cause} (still failing: {reason})"
                return False
            self.broken = None
            log.warning("store recovered by itself after: %s", cause)
            return True

    def _reopen(self) -> None:
        """What a restart's open() does, in place: undo the unacknowledged journal record,
        replay the journal into freshly written (and fsynced) files, check the epoch."""
        if self.durability != "journal":
            raise StoreCorrupt(f"store in {self.base} needs a restart to re-read what reached the disk")
        if self._truncate_to is not None and self._seg_fd is not None:
            os.ftruncate(self._seg_fd, self._truncate_to)
            os.fdatasync(self._seg_fd)
        self._truncate_to = None
        self._close_fds()
        segments = self._segments()
        epoch = self._recover(segments) if segments else self._read_epoch_strict()
        if epoch != self.epoch:
            raise StoreCorrupt(
                f"store in {self.base} is at epoch {epoch} on disk but this process acknowledged "
                f"epoch {self.epoch}"
            )
        self._dirty.clear()
        self._epoch_lines.clear()
        self._to_delete.clear()
        self.wal_dir.mkdir(mode=0o700, exist_ok=True)
        self._open_segment()
        self._open_epoch_file()

    # -- checkpoint / close --------------------------------------------------------------
    @property
    def needs_checkpoint(self) -> bool:
        return bool(self._dirty or self._to_delete) and not self.broken

    def checkpoint(self) -> bool:
        """Make the files written since the last checkpoint durable and drop their journal.

        Runs concurrently with commits: the journal is rotated under the lock (cheap), the
        slow sync happens outside it. Returns True if a checkpoint was done.
        """
        with self._checkpoint_lock:
            return self._checkpoint()

    def _checkpoint(self) -> bool:
        if self.durability != "journal" or not self.opened:
            return False
        with self._lock:
            if self.broken or not (self._dirty or self._to_delete):
                return False
            dirty, self._dirty = self._dirty, set()
            lines, self._epoch_lines = self._epoch_lines, []
            old_fd, old_path = self._seg_fd, self._seg_path
            try:
                self._open_segment()
            except OSError as exc:
                self._dirty |= dirty
                self._epoch_lines[:0] = lines
                log.warning("store checkpoint: cannot start a new journal segment: %s", exc)
                return False
            if old_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(old_fd)
            if old_path is not None:
                self._to_delete.append(old_path)
            to_delete = list(self._to_delete)
        try:
            self._sync_files(dirty)
            self._append_model_epochs(lines)
            for p in to_delete:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            _fsync_dir(self.wal_dir)
        except OSError as exc:
            with self._lock:
                self._dirty |= dirty
                self._epoch_lines[:0] = lines
                # A retried fsync can succeed although the data it failed on is gone
                # ("fsyncgate"): do not trust the files; healing rewrites them from the journal.
                self.broken = f"checkpoint failed: {exc.strerror or exc}"
            log.warning("store checkpoint failed (the journal keeps the data; repairing): %s", exc)
            return False
        with self._lock:
            self._to_delete = [p for p in self._to_delete if p not in to_delete]
        return True

    def _sync_files(self, dirty: Iterable[Path]) -> None:
        """fsync each replaced file, then the directories holding their names. Only our own
        files are flushed (a syncfs would also flush every other process's dirty data)."""
        for p in sorted(dirty):
            try:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(self.models_dir)
        _fsync_dir(self.base)

    def close(self) -> None:
        """Checkpoint and drop the journal, so a cleanly stopped store is pure SIE layout.

        Holds the checkpoint lock throughout: a background checkpoint still running in a
        worker thread finishes first, and none can start on a closing store."""
        with self._checkpoint_lock:
            if not self.opened:
                return
            if self.durability == "journal" and not self.broken:
                try:
                    self._checkpoint()
                    with self._lock:
                        self._close_fds()
                        if not self._dirty and not self._to_delete and self._seg_path is not None:
                            self._seg_path.unlink()
                            self._seg_path = None
                            _fsync_dir(self.wal_dir)
                            with contextlib.suppress(OSError):
                                self.wal_dir.rmdir()
                except OSError as exc:
                    log.warning("store close: journal left in place (replayed at next start): %s", exc)
            self._close_fds()
            self._release_lock()
            self.opened = False
