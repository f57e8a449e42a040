"""One path layer for the files hubert-jax reads and writes: local paths go through `open` and `os` exactly as
before; `gs://bucket/...` paths go through fsspec's Cloud Storage filesystem (gcsfs).

Why fsspec/gcsfs: it is what grain, tensorstore-backed Orbax and pandas users already have beside JAX, it
speaks the JSON API that the Cloud Storage emulators implement (tests point it at one through
`STORAGE_EMULATOR_HOST`), and it gives file objects with seek and ranged reads, so soundfile and NumPy read
objects as they read files. etils.epath would route gs:// through TensorFlow's gfile or the same fsspec.

Remote errors end in one line that names the path and the fix: a missing bucket or object, no permission,
no credentials (`StorageError`, a subclass of the OSError kinds callers already catch).
"""

from __future__ import annotations

import builtins
import functools
import io
import os
import posixpath

REMOTE_PREFIX = "gs://"


class StorageError(OSError):
    """A remote path that cannot be read or written, with the reason and the fix in one line."""


class MissingError(StorageError, FileNotFoundError):
    """A bucket or object that does not exist."""


def is_remote(path) -> bool:
    return isinstance(path, str) and path.startswith(REMOTE_PREFIX)


@functools.lru_cache(maxsize=None)
def _filesystem():
    try:
        import gcsfs
    except ImportError as e:  # pragma: no cover - gcsfs is a declared dependency
        raise StorageError("gs:// paths need gcsfs: pip install gcsfs") from e
    # this process' one client, made when first needed; no listings cache: other hosts and runs write the same
    # bucket, and a cached listing of a folder hides what they (or an Orbax save) added since
    return gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)


def _explained(path: str, e: Exception) -> StorageError:
    """One line naming the path, what went wrong and what to do."""
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    bucket = path[len(REMOTE_PREFIX):].split("/", 1)[0]
    if isinstance(e, FileNotFoundError) or "404" in text or "No such" in text:
        return MissingError(f"{path}: no such object (or no bucket gs://{bucket}); check the path, or create the "
                            f"bucket first ({text})")
    if "credential" in text.lower() or "anonymous caller" in text.lower() or text.endswith(", 401"):
        return StorageError(f"{path}: no Google Cloud credentials; run `gcloud auth application-default login` or "
                            f"set GOOGLE_APPLICATION_CREDENTIALS ({text})")  # gcsfs goes anonymous without any
    if isinstance(e, PermissionError) or "403" in text or "401" in text:
        return StorageError(f"{path}: permission denied; give this machine's service account read/write access "
                            f"to gs://{bucket} (roles/storage.objectAdmin) ({text})")
    return StorageError(f"{path}: {text}")


def _remote(path: str, call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except StorageError:
        raise
    except Exception as e:  # gcsfs raises OSError kinds, HttpError, google.auth errors
        raise _explained(path, e) from e


def open(path, mode: str = "r", *, encoding: str | None = None, newline: str | None = None):  # noqa: A001
    """builtins.open for a local path; a file object on the object for gs:// (text modes decode `encoding`)."""
    if not is_remote(path):
        return builtins.open(path, mode, encoding=encoding, newline=newline)
    binary = _remote(path, _filesystem().open, path, mode.replace("t", "").replace("b", "") + "b")
    if "b" in mode:
        return binary
    return io.TextIOWrapper(binary, encoding=encoding or "utf-8", newline=newline)


def read_bytes(path) -> bytes:
    if not is_remote(path):
        with builtins.open(path, "rb") as f:
            return f.read()
    return _remote(path, _filesystem().cat_file, path)


def read_range(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a gs:// object (one ranged request)."""
    return _remote(path, _filesystem().cat_file, path, start=start, end=end)


def isfile(path) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    return bool(_remote(path, _filesystem().isfile, path))


def isdir(path) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    return bool(_remote(path, _filesystem().isdir, path))


def exists(path) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    return bool(_remote(path, _filesystem().exists, path))


def files_under(root: str) -> set[str]:
    """Every object under a gs:// prefix, as gs:// paths: one listing instead of a request per file."""
    found = _remote(root, _filesystem().find, root.rstrip("/"))
    return {REMOTE_PREFIX + p if not p.startswith(REMOTE_PREFIX) else p for p in found}


def walk(root: str):
    """os.walk(root, followlinks=True) for a local folder; for a gs:// prefix the same (folder, folders, files)
    triples, a listing per folder, top-down (pruning `folders` in place skips them), folders as gs:// paths."""
    if not is_remote(root):
        yield from os.walk(root, followlinks=True)
        return
    found = _remote(root, _filesystem().walk, root.rstrip("/"), topdown=True, refresh=True)
    while (step := _remote(root, next, found, None)) is not None:
        folder, folders, files = step
        yield (folder if folder.startswith(REMOTE_PREFIX) else REMOTE_PREFIX + folder), folders, files


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(os.path.abspath(path))


def is_absolute(path: str) -> bool:
    return is_remote(path) or os.path.isabs(path)


def absolute(path: str) -> str:
    """os.path.abspath for a local path; a gs:// path as it is."""
    return path if is_remote(path) else os.path.abspath(path)


def normpath(path: str) -> str:
    if is_remote(path):
        return REMOTE_PREFIX + posixpath.normpath(path[len(REMOTE_PREFIX):])
    return os.path.normpath(path)


# ----------------------------------------------------------------------------- conditional writes (locks)
def _bucket_and_name(path: str) -> tuple[str, str]:
    bucket, _, name = path[len(REMOTE_PREFIX):].partition("/")
    return bucket, name


def _upload(path: str, data: bytes, if_generation: int) -> int | None:
    """One multipart upload with `ifGenerationMatch` (0: only if absent); the object's new generation, or None
    when the precondition failed (412: someone else's write came first)."""
    import json
    from urllib.parse import quote

    fs = _filesystem()
    bucket, name = _bucket_and_name(path)
    boundary = "hubert-jax-object"
    body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps({'name': name})}\r\n"
            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    try:
        out = fs.call("POST", f"{fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o", uploadType="multipart",
                      ifGenerationMatch=if_generation, data=body, json_out=True,
                      headers={"Content-Type": f"multipart/related; boundary={boundary}"})
    except FileExistsError:  # gcsfs' name for 412 Precondition Failed
        return None
    except Exception as e:
        raise _explained(path, e) from e
    fs.invalidate_cache(posixpath.dirname(path))
    return int(out["generation"])


def create_if_absent(path: str, data: bytes) -> int | None:
    """Write the object only if none exists (the store's atomic create): its generation, or None."""
    return _upload(path, data, 0)


def replace_if_generation(path: str, data: bytes, generation: int) -> int | None:
    """Overwrite the object only while it is still `generation` (compare-and-swap): the new generation, or None."""
    return _upload(path, data, int(generation))


def stat(path: str) -> dict | None:
    """{"generation": int, "updated": seconds since the epoch on the store's clock} of an object, None if absent."""
    import datetime
    from urllib.parse import quote

    fs = _filesystem()
    bucket, name = _bucket_and_name(path)
    try:
        out = fs.call("GET", f"{fs._location}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}",
                      json_out=True)
    except FileNotFoundError:
        return None
    except Exception as e:
        raise _explained(path, e) from e
    updated = datetime.datetime.fromisoformat(out["updated"].replace("Z", "+00:00")).timestamp()
    return {"generation": int(out["generation"]), "updated": updated}


def remove(path: str) -> None:
    """Delete a file or object (absent: nothing to do)."""
    if not is_remote(path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        return
    try:
        _filesystem().rm_file(path)
    except FileNotFoundError:
        pass
    except Exception as e:
        raise _explained(path, e) from e


# ----------------------------------------------------------------------------- folders and growing files
def listdir(path: str) -> list[str]:
    """The names directly under a folder (local) or prefix (gs://); [] when there is none."""
    if not is_remote(path):
        return os.listdir(path) if os.path.isdir(path) else []
    try:
        found = _filesystem().ls(path.rstrip("/"), detail=False, refresh=True)
    except FileNotFoundError:
        return []
    except Exception as e:
        raise _explained(path, e) from e
    return sorted({posixpath.basename(p.rstrip("/")) for p in found})


def write_bytes(path: str, data: bytes) -> None:
    """The whole file or object at once, atomically: a local file is written aside and renamed into place, an
    object appears complete or not at all."""
    if not is_remote(path):
        with builtins.open(f"{path}.tmp", "wb") as f:
            f.write(data)
        os.replace(f"{path}.tmp", path)
        return
    _remote(path, _filesystem().pipe_file, path, data)


def upload_folder(local: str, remote: str, *, last: str = "config.json") -> None:
    """Copy a local folder to a gs:// prefix, replacing what the prefix held. `last` is removed first and written
    last: a reader that finds it finds the whole folder, and a copy cut short leaves none (so no loader takes a
    mix of the old and the new files for a model)."""
    fs = _filesystem()
    names = sorted(os.path.relpath(os.path.join(root, f), local) for root, _, files in os.walk(local) for f in files)
    stale = files_under(remote) if exists(remote) else set()
    if join(remote, last) in stale:
        remove(join(remote, last))
    for path in sorted(stale - {join(remote, n) for n in names} - {join(remote, last)}):
        remove(path)
    for name in sorted(names, key=lambda n: n == last):
        _remote(remote, fs.put_file, os.path.join(local, name), join(remote, name))
    fs.invalidate_cache(remote)


def download_folder(remote: str, local: str) -> str:
    """Copy every object under a gs:// prefix into a local folder (made if absent); returns `local`."""
    fs = _filesystem()
    prefix = remote.rstrip("/") + "/"
    for path in sorted(files_under(remote)):
        target = os.path.join(local, *path[len(prefix):].split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _remote(path, fs.get_file, path, target)
    return local


def move_folder(source: str, target: str, *, first: str | None = None) -> None:
    """Move a folder: os.rename locally; on gs:// (which has no rename) `first` is deleted first (the object whose
    presence marks the folder complete: a move cut short leaves no complete folder at the source), then every
    object is copied to `target` and deleted from `source`."""
    if not is_remote(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(source, target)
        return
    fs = _filesystem()
    prefix = source.rstrip("/") + "/"
    if first is not None and exists(join(source, first)):
        remove(join(source, first))
    for path in sorted(files_under(source)):
        _remote(path, fs.copy, path, join(target, path[len(prefix):]))
        remove(path)
    fs.invalidate_cache(source)


class GrowingFile:
    """A file that only grows (metrics.jsonl, run.log, a TensorBoard event file): appended and flushed as usual on a
    local path; on gs://, which cannot append, the object is rewritten whole (what it held when opened, then all
    written since) at most every `every_s` seconds and at flush(force=True)/close, so a run that is killed loses
    at most the last `every_s` seconds. `binary`: bytes are written, not text."""

    def __init__(self, path: str, *, every_s: float = 30.0, binary: bool = False):
        import time

        self.path, self.every_s, self._clock, self._binary = path, every_s, time.monotonic, binary
        if is_remote(path):
            self._data = bytearray(read_bytes(path) if exists(path) else b"")
            self._written, self._file = self._clock(), None
        else:
            self._file = builtins.open(path, "ab") if binary else builtins.open(path, "a", encoding="utf-8")

    def write(self, data) -> None:
        if self._file is not None:
            self._file.write(data)
        else:
            self._data += data if self._binary else data.encode("utf-8")

    def flush(self, force: bool = False) -> None:
        if self._file is not None:
            self._file.flush()
        elif force or self._clock() - self._written >= self.every_s:
            write_bytes(self.path, bytes(self._data))
            self._written = self._clock()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self.flush(force=True)


def prepare_for_orbax(path: str) -> None:
    """Make etils.epath's Cloud Storage client (through which Orbax lists, creates and commits gs:// steps) in
    this thread. epath caches one gcsfs client per process; made first inside one of Orbax's worker threads, it
    is tied to that thread's short-lived event loop, and later calls through it wait forever (seen: a second
    run's CheckpointManager in one process hung in epath's `exists`). Its listings cache is emptied, so that Orbax
    sees the steps other processes wrote since."""
    if is_remote(path):
        from etils import epath

        _remote(path, epath.Path(path).exists)
        refresh_orbax_view(path)


def refresh_orbax_view(path: str) -> None:
    """Empty the listings cache of epath's Cloud Storage client, so that Orbax sees the objects other processes (or
    this one, through our own client) wrote or removed since it last listed."""
    if is_remote(path):
        import fsspec

        fsspec.filesystem("gcs", finalize_on_close=True).invalidate_cache()


def download_file(remote: str, local: str) -> str:
    """Copy one gs:// object to a local path; returns `local`."""
    _remote(remote, _filesystem().get_file, remote, local)
    return local


def upload_file(local: str, remote: str) -> None:
    """Copy one local file to a gs:// object (the object appears whole or not at all)."""
    _remote(remote, _filesystem().put_file, local, remote)
