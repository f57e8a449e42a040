"""One run per workdir: an exclusive lock file, `{workdir}/run.lock`, held for the life of a run.

Taking the lock is an exclusive create (`O_CREAT | O_EXCL`) of the file on the workdir's own filesystem,
so two runs on two machines that mount one bucket or NFS share collide as two processes on one machine
do. The file says who holds it (host, pid, start time, the command) and carries a heartbeat: the holder
rewrites it every `heartbeat_s` seconds, and before each checkpoint save checks that it still holds it
(`check`), so a run that lost its lock stops before writing.

A lock is stale, and is taken over with a warning, when
  - its holder ran on this machine (same host name, boot id and pid namespace) and that process is gone
    (or its pid now belongs to a process started at another time): decided at once, e.g. after kill -9;
  - otherwise, when its heartbeat is older than `stale_after_s` (default 300 s, ten missed heartbeats).
    The age is the lock file's modification time against a probe file written now on the same
    filesystem, so both times come from the filesystem's clock and the hosts' clocks never enter.
Two runs taking over one stale lock at once are kept apart by a second exclusive file,
`run.lock.takeover`, held only while the stale lock is replaced.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import threading
import uuid

from hubert_jax import storage

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class WorkdirBusy(RuntimeError):
    """Another run holds the workdir."""


class LockLost(RuntimeError):
    """This run's lock was taken over (it looked stale to another run): stop before writing anything."""


def _read(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read() or "{}")  # empty: a write that never finished, judged by its age
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {}  # half written or unreadable: judged by its age alone


def _process_start(pid: int) -> str | None:
    """The process' start time in clock ticks since boot (/proc), None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _machine() -> dict:
    """What makes two processes comparable by pid: the same host, boot and pid namespace."""
    def read(path, how):
        try:
            return how(path)
        except OSError:
            return None

    return {"host": socket.gethostname(),
            "boot_id": read("/proc/sys/kernel/random/boot_id", lambda p: open(p).read().strip()),
            "pid_ns": read("/proc/self/ns/pid", lambda p: os.stat(p).st_ino)}


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    now = _process_start(pid)
    return start is None or now is None or now == start


def describe(holder: dict) -> str:
    """Who holds a lock, from its file's contents: host, pid, start time and command."""
    if not holder:
        return "an unreadable lock file"
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"
            f" ({' '.join(holder.get('command', []))})")


class WorkdirLock:
    """One run per workdir: a lock file made with O_EXCL, refreshed by a heartbeat thread and taken over when stale."""
    def __init__(self, workdir: str, *, heartbeat_s: float = 30.0, stale_after_s: float = 300.0,
                 name: str = LOCK_NAME, what: str | None = None, option: str = "--workdir"):
        """`name`: the lock file in `workdir`; `what` (default: the workdir) and `option` name, in a refusal,
        what the lock guards and the option that picks another (a label stage locks its output prefix)."""
        self.workdir = storage.absolute(workdir)
        self.path = storage.join(self.workdir, name)
        self.what, self.option = what or self.workdir, option
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._beats = 0

    # ------------------------------------------------------------------ taking and giving back
    def _record(self) -> dict:
        return {**_machine(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": sys.argv, "token": self.token, "heartbeat": self._beats}

    def _create(self) -> bool:
        """Write the lock whole or not at all: the record goes to a file of this run's own, which is then
        hard-linked as the lock (atomic, and refused when a lock exists), so a full disk or a crash never
        leaves a partial lock. Filesystems without hard links get an exclusive create instead."""
        record = self._record()
        tmp = f"{self.path}.{self.token}.new"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:  # no hard links here (some FUSE mounts)
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(record, f)
        finally:
            try:
                os.remove(tmp)
            except OSError:
                pass
        self._started = record["started"]
        return True

    def _holder(self) -> dict | None:
        """The lock's record: None when there is no lock, {} when it is unreadable."""
        return _read(self.path)

    def _prepare(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)

    def acquire(self) -> "WorkdirLock":
        """Take the lock, taking over a stale one with a warning; WorkdirBusy names a live holder."""
        self._prepare()
        for _ in range(3):  # a holder may release (or a taker replace) between our looks
            if self._create():
                break
            holder = self._holder()
            if holder is None:
                continue  # released meanwhile
            why = self.stale_reason(holder)
            if why is None and not holder:
                raise WorkdirBusy(
                    f"{self.path}: the lock is unreadable (empty or partly written, e.g. by a run that "
                    f"stopped on a full disk); it counts as stale {self.stale_after_s:.0f} s after it last changed. "
                    f"If no run uses {self.what}, delete {self.path} and start again.")
            if why is None:
                raise WorkdirBusy(
                    f"{self.what} is in use by another run ({describe(holder)}): two runs must not write one "
                    f"output. Wait for it to end, stop it, or use another {self.option}. If that run is gone, its "
                    f"lock {self.path} becomes stale after {self.stale_after_s:.0f} s without a heartbeat "
                    f"(at once when it ran on this machine).")
            if self._take_over(holder, why):
                break
        else:
            raise WorkdirBusy(f"{self.path}: could not take the workdir lock (other runs are taking it at the same "
                              f"time); try again")
        self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stale_reason(self, holder: dict) -> str | None:
        """Why the lock `holder` wrote is stale, or None while its run may be alive."""
        here = _machine()
        if holder and all(holder.get(k) == here[k] for k in here) and here["boot_id"] is not None:
            if not _alive(int(holder.get("pid", -1)), holder.get("process_start")):
                return f"its process ({holder.get('pid')}) on this machine is gone"
            return None
        age = self._age()
        if age is not None and age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s (stale after {self.stale_after_s:.0f} s)"
        return None

    def _age(self, path: str | None = None) -> float | None:
        """Seconds since `path` (the lock) changed, on the filesystem's clock (a probe file's mtime)."""
        probe = os.path.join(self.workdir, f".{LOCK_NAME}.probe-{self.token}")
        try:
            with open(probe, "w"):
                pass
            return os.stat(probe).st_mtime - os.stat(path or self.path).st_mtime
        except FileNotFoundError:
            return None
        finally:
            try:
                os.remove(probe)
            except OSError:
                pass

    def _take_over(self, holder: dict, why: str) -> bool:
        guard = self.path + ".takeover"
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a taker that died mid-way leaves its guard: stale after a minute on the fs clock
                probe_age = self._age(guard)
                if probe_age is not None and probe_age > 60:
                    os.remove(guard)
            except OSError:
                pass
            return False
        os.close(fd)
        try:
            if _read(self.path) != holder:
                return False  # changed meanwhile: look again
            os.remove(self.path)
            if not self._create():
                return False
            logger.warning("%s: took over a stale lock (%s): %s", self.path, why, describe(holder))
            return True
        finally:
            os.remove(guard)

    def held(self) -> bool:
        """Whether the lock file is still this run's."""
        current = self._holder()
        return bool(current) and current.get("token") == self.token

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.held():
                self._lost = describe(self._holder() or {})
                logger.error("%s: this run's workdir lock was taken over (%s)", self.path, self._lost)
                return
            self._beats += 1
            try:
                self._write_heartbeat({**self._record(), "started": self._started})
            except OSError as e:  # a full disk or a flaky mount: the next beat tries again
                logger.warning("%s: heartbeat not written (%s)", self.path, e)

    def _write_heartbeat(self, record: dict) -> None:
        tmp = f"{self.path}.{self.token}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, self.path)

    def check(self) -> None:
        """Raise LockLost when another run took this run's lock: call before writing to the workdir."""
        if self._lost is None and not self.held():
            self._lost = describe(self._holder() or {})
        if self._lost is not None:
            raise LockLost(f"{self.path}: another run took over this workdir ({self._lost}); stopping without "
                           f"writing. Its lock looked stale to it: was this run stalled for over "
                           f"{self.stale_after_s:.0f} s?")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.held():
            self._remove()

    def _remove(self) -> None:
        os.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class ObjectLock(WorkdirLock):
    """The same lock for a `gs://` workdir, on the object store's own atomic primitives: the lock object is
    created only if absent (`ifGenerationMatch=0`), each heartbeat replaces exactly the generation this run
    wrote last (so a run whose lock was taken over cannot write it back), and a stale lock is taken over by
    replacing exactly the generation that was judged stale, so of two runs taking over at once one wins and
    no guard object is needed. Ages are measured on the store's clock: the lock's `updated` time against a
    probe object's, written now."""

    def __init__(self, workdir: str, **kw):
        super().__init__(workdir, **kw)
        self._generation: int | None = None  # the lock object's generation this run wrote last

    def _holder(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.path) or b"{}")
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def _create(self) -> bool:
        record = self._record()
        generation = storage.create_if_absent(self.path, json.dumps(record).encode())
        if generation is None:
            return False
        self._generation, self._started = generation, record["started"]
        return True

    def _prepare(self) -> None:
        pass  # a bucket has no folders to make

    def _age(self, path: str | None = None) -> float | None:
        probe = storage.join(self.workdir, f".{LOCK_NAME}.probe-{self.token}")
        try:
            if storage.create_if_absent(probe, b"") is None:
                return None
            now, then = storage.stat(probe), storage.stat(path or self.path)
            return None if now is None or then is None else now["updated"] - then["updated"]
        finally:
            storage.remove(probe)

    def _take_over(self, holder: dict, why: str) -> bool:
        current = storage.stat(self.path)
        if current is None or self._holder() != holder:
            return False  # changed meanwhile: look again
        record = self._record()
        generation = storage.replace_if_generation(self.path, json.dumps(record).encode(), current["generation"])
        if generation is None:
            return False  # another run's write (a heartbeat, or another taker) came first
        self._generation, self._started = generation, record["started"]
        logger.warning("%s: took over a stale lock (%s): %s", self.path, why, describe(holder))
        return True

    def held(self) -> bool:
        current = storage.stat(self.path)
        return current is not None and current["generation"] == self._generation

    def _write_heartbeat(self, record: dict) -> None:
        generation = storage.replace_if_generation(self.path, json.dumps(record).encode(), self._generation)
        if generation is not None:
            self._generation = generation

    def _remove(self) -> None:
        storage.remove(self.path)


def make_lock(workdir: str, **kw) -> WorkdirLock:
    """The lock for a workdir: on its filesystem, or on the object store for gs://."""
    return ObjectLock(workdir, **kw) if storage.is_remote(workdir) else WorkdirLock(workdir, **kw)


def lock_workdir(workdir: str, *, heartbeat_s: float = 30.0, stale_after_s: float = 300.0) -> WorkdirLock | None:
    """Process 0 takes the workdir's lock (returned; None on the other processes), and every process learns
    whether it could, so that all of them stop together when another run holds it."""
    import jax

    from hubert_jax.distributed import all_hosts_agree

    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = make_lock(workdir, heartbeat_s=heartbeat_s, stale_after_s=stale_after_s).acquire()
        except WorkdirBusy as e:
            error = e
    if not all_hosts_agree(error is None):
        raise error or WorkdirBusy(f"{workdir}: process 0 could not lock the workdir (its log says why)")
    return lock
