"""The writer lock of a store: an ``flock``'d file beside a local store (:class:`StoreLock`), an
exclusively created object beside a URL store (:class:`ObjectStoreLock`); :func:`store_lock`
picks the right one, always for the store's canonical location
(:func:`.locations.canonical_location`: resolved path, symlinks followed; ``file://`` URLs are
local paths), so two spellings of one store share one lock. A lock whose holder is alive is
never taken over."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .layout import StoreError, StoreLockedError
from .locations import canonical_location, is_url, url_filesystem

__all__ = ["LOCK_SUFFIX", "StoreLock", "ObjectStoreLock", "store_lock", "lock_path"]

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
OBJECT_LOCK_STALE_S = 600.0  # an object-store lock without a heartbeat for this long is stale
OBJECT_LOCK_HEARTBEAT_S = 60.0


def lock_path(path: str | Path) -> Path:
    """The writer lock of a local store lives beside its canonical path: ``<store>.lock``."""
    return Path(str(canonical_location(path)) + LOCK_SUFFIX)


def _pid_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, started: int | None = None) -> bool:
    """True if process ``pid`` runs (and, when its start time was recorded, is the same process,
    not a later one that reused the pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is not None:
        now = _pid_start(pid)
        return now is None or now == started
    return True


def _refuse(path: Path, what: str) -> StoreError:
    return StoreError(f"{path} is {what} where the store's writer lock belongs: refusing to "
                      "use it (nothing was written); remove it or choose another output")


def _open_lock_file(path: Path) -> int:
    """A descriptor of the lock file, never through a symbolic link: created (``O_EXCL |
    O_NOFOLLOW``) or, when it exists, opened without following a link and checked to be a
    regular file with one name; a link, a folder or anything else there is refused."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(10):  # another job may create or remove it between our two calls
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)
        except FileNotFoundError:
            continue
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _refuse(path, "a symbolic link") from None
            if err.errno == errno.EISDIR:
                raise _refuse(path, "a folder") from None
            if err.errno in (errno.ENXIO, errno.EOPNOTSUPP):
                raise _refuse(path, "a socket or device") from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise _refuse(path, "not a regular file" if not stat.S_ISREG(info.st_mode)
                          else "a file with other names (hard links)")
        return fd
    raise StoreLockedError(f"{path}: the lock file keeps appearing and vanishing; try again")


def _holder_of(fd: int, path: Path) -> dict[str, Any]:
    """What an open lock file says about its holder; {} when empty; a file that is not a lock
    (other data in it) is refused, so it is never truncated."""
    raw = os.pread(fd, 1 << 16, 0)
    if not raw.strip():
        return {}
    try:
        info = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        info = None
    if not isinstance(info, dict) or "pid" not in info:
        os.close(fd)
        raise _refuse(path, "a file that is not a jntk lock (it holds other data)")
    return info


class StoreLock:
    """Exclusive writer lock of a store: ``<store>.lock``, an flock'd file holding pid/host/time.

    The OS releases an flock when its process dies (SIGKILL included), so a crashed job never
    blocks the next one; a lock file left by a dead holder is taken over with a warning. The
    file is created with ``O_EXCL | O_NOFOLLOW`` and reopened without following links: a
    symbolic link, a folder or a foreign file planted where it belongs is refused, never
    written through. Released, it stays (empty) beside a store and is removed where no store
    was made.
    """

    def __init__(self, store_path: str | Path) -> None:
        self.path = lock_path(store_path)
        self.store = str(self.path)[:-len(LOCK_SUFFIX)]
        self._fd: int | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return {}
        try:
            text = os.pread(fd, 1 << 16, 0).decode(errors="replace").strip()
            return json.loads(text) if text else {}
        except (OSError, json.JSONDecodeError):
            return {}
        finally:
            os.close(fd)

    def _flocked(self) -> int:
        """The lock file's descriptor with the flock held, on the file now at ``self.path``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = _open_lock_file(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._locked(self._holder()) from None
            try:  # a holder that released removed the file: lock the one now there instead
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise StoreLockedError(f"{self.path}: the lock file keeps being replaced; try again")

    def acquire(self) -> "StoreLock":
        fd = self._flocked()
        previous = _holder_of(fd, self.path)
        if previous.get("pid") and int(previous["pid"]) != os.getpid():
            here = previous.get("host") == socket.gethostname()
            if here and _pid_alive(int(previous["pid"]), previous.get("pid_start")):
                # alive but without the flock: a writer that locks another way (an old
                # object-store lock on file://) -- never take a live writer's store
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise self._locked(previous)
            state = "no longer running" if here else "on another host, not holding the flock"
            log.warning("taking over the stale lock %s of pid %s on %s (started %s, %s)",
                        self.path, previous.get("pid"), previous.get("host"),
                        previous.get("started"), state)
        info = {"pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
                "host": socket.gethostname(), "store": self.store,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _locked(self, who: dict[str, Any]) -> StoreLockedError:
        return StoreLockedError(
            f"store {self.store} is being written by another job (pid {who.get('pid', '?')} on "
            f"{who.get('host', '?')}, started {who.get('started', '?')}); wait for it to "
            "finish or stop it")

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty lock file is a free lock; keep the inode
        if not os.path.isdir(self.store):  # no store was made (refused, or stopped early)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(self.path)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class ObjectStoreLock:
    """Exclusive writer lock of a store at an fsspec URL: the object ``<store>.lock``.

    Taken by creating that object exclusively (``open(…, "xb")``: S3 ``If-None-Match: *``, an
    ``O_EXCL`` create for ``file://``), then reading it back to check that the token in it is
    ours. It holds the owner's host, pid, start time and a heartbeat that a background thread
    renews every ``heartbeat_s``; releasing deletes it. Object stores cannot tell that a writer
    died, so a lock is *stale* -- taken over with a warning -- when its holder ran on this host
    and that pid is gone, or when its heartbeat is older than ``stale_after_s`` (a killed job on
    another node: wait that long, or delete ``<store>.lock`` by hand once sure it is dead).
    Clocks of the nodes are assumed to agree to well within ``stale_after_s``.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 stale_after_s: float | None = None, heartbeat_s: float | None = None) -> None:
        self.url = str(url).rstrip("/") + LOCK_SUFFIX
        self.store_url = str(url)
        self.fs, self.path = url_filesystem(self.url, storage_options)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._local = "file" in protocols
        env_stale = os.environ.get("JNTK_LOCK_STALE_S")
        self.stale_after_s = float(stale_after_s if stale_after_s is not None
                                   else env_stale if env_stale else OBJECT_LOCK_STALE_S)
        self.heartbeat_s = (heartbeat_s if heartbeat_s is not None
                            else max(1.0, min(OBJECT_LOCK_HEARTBEAT_S, self.stale_after_s / 4)))
        self.token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        """The lock object's contents, or None when there is no lock."""
        for attempt in range(5):  # an exclusive create may not have written its bytes yet
            self.fs.invalidate_cache(self.path)
            try:
                with self.fs.open(self.path, "rb") as fh:
                    text = fh.read().decode()
            except FileNotFoundError:
                return None
            try:
                info = json.loads(text)
                return info if isinstance(info, dict) else {}
            except json.JSONDecodeError:
                time.sleep(0.05 * (attempt + 1))
        return {}

    def _stale_reason(self, info: dict[str, Any]) -> str | None:
        if info.get("host") == socket.gethostname() and info.get("pid"):
            if not _pid_alive(int(info["pid"]), info.get("pid_start")):
                return "its process is no longer running"
            return None
        beat = info.get("heartbeat")
        if not isinstance(beat, (int, float)):
            return "it holds no heartbeat"
        age = time.time() - float(beat)
        if age > self.stale_after_s:
            return f"its last heartbeat is {age:.0f} s old (> {self.stale_after_s:.0f} s)"
        return None

    def _info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
                "host": socket.gethostname(), "token": self.token,
                "started": self._started, "heartbeat": time.time()}

    def _write(self, mode: str) -> None:
        data = json.dumps(self._info()).encode()
        if mode == "wb" and self._local:
            # a local file is truncated before it is rewritten: readers must never see that
            tmp = f"{self.path}.{self.token}.tmp"
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
            return
        with self.fs.open(self.path, mode) as fh:  # object stores put whole objects
            fh.write(data)

    def acquire(self) -> "ObjectStoreLock":
        self.token = uuid.uuid4().hex
        self._started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for attempt in range(2):
            try:
                self._write("xb")
            except FileExistsError:
                info = self.holder()
                if info is None:
                    continue  # released meanwhile
                reason = self._stale_reason(info)
                if reason is None or attempt:
                    self.token = None
                    raise StoreLockedError(
                        f"store {self.store_url} is being written by another job (pid "
                        f"{info.get('pid', '?')} on {info.get('host', '?')}, started "
                        f"{info.get('started', '?')}); wait for it to finish or stop it. If "
                        f"that job is dead (e.g. its node was lost), the lock {self.url} turns "
                        f"stale {self.stale_after_s:.0f} s after its last heartbeat, or "
                        "delete it by hand") from None
                log.warning("taking over the stale lock %s of pid %s on %s (started %s): %s",
                            self.url, info.get("pid"), info.get("host"), info.get("started"),
                            reason)
                again = self.holder()
                if again is not None and again.get("token") == info.get("token"):
                    self.fs.rm(self.path)
                continue
            if (self.holder() or {}).get("token") != self.token:  # a backend without "x"
                self.token = None
                raise StoreLockedError(f"store {self.store_url}: another job took the lock "
                                       f"{self.url} at the same moment; try again later")
            break
        else:
            self.token = None
            raise StoreLockedError(f"store {self.store_url}: could not take the lock {self.url}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="jntk-store-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (self.holder() or {}).get("token") != self.token:
                    log.error("lost the store lock %s: another job took it over", self.url)
                    return
                self._write("wb")
            except Exception as err:  # noqa: BLE001 -- a flaky network must not kill the job
                log.warning("could not renew the store lock %s: %s", self.url, err)

    def release(self) -> None:
        if self.token is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if (self.holder() or {}).get("token") == self.token:
                self.fs.rm(self.path)
        finally:
            self.token = None

    def __enter__(self) -> "ObjectStoreLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def store_lock(location: str | Path, storage_options: dict[str, Any] | None = None
               ) -> StoreLock | ObjectStoreLock:
    """The writer lock of a store, on its canonical location: :class:`StoreLock` (flock) for a
    local path or ``file://`` URL, else :class:`ObjectStoreLock`."""
    where = canonical_location(location)
    if isinstance(where, Path):
        if (not is_url(location) and os.path.islink(Path(location).expanduser())
                and where.exists() and not where.is_dir()):
            raise StoreError(f"output {location} is a symbolic link to a file ({where}): "
                             "refusing to write through it; give the real path of a store or "
                             "a new one")
        return StoreLock(where)
    return ObjectStoreLock(where, storage_options)
