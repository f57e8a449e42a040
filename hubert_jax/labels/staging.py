"""gs:// paths of the label commands, through a scratch folder on this host.

The label stages memory-map their features (k-means reads rows scattered over the whole dump), write them
in resumable chunks and rename finished files into place: object storage has no memory maps and no rename.
So a command's gs:// feature, centroid and label inputs are copied into the scratch folder before its stage
runs, its gs:// outputs are written there, and they are uploaded when the stage ends, the file whose presence
marks an output complete (`{prefix}.len`, the `.km` file itself) last. The audio a manifest lists is not
copied: it is read from the bucket as it is decoded (hubert_jax/data/audio.py).

The scratch folder is `$HUBERT_JAX_SCRATCH`, else `~/.cache/hubert_jax/scratch`, laid out as bucket/object,
so a `dump` or `label --model` stopped on a host resumes from the chunks it left there. A host needs room
for its own share of the features it writes or reads (as fairseq's dumps need it on a shared disk).
"""

from __future__ import annotations

import os
import posixpath
import time

from hubert_jax import storage


def scratch_root() -> str:
    return os.environ.get("HUBERT_JAX_SCRATCH") or os.path.join(os.path.expanduser("~"), ".cache", "hubert_jax",
                                                                "scratch")


def _belongs(name: str, base: str, *, shards: bool = False) -> bool:
    """Whether a file name is one of prefix `base`'s files (`base`, `base.*`; with `shards`, `base_*` too)."""
    return name == base or name.startswith(base + ".") or (shards and name.startswith(base + "_"))


def _owned(name: str) -> bool:
    """Not a lock or a half-written temporary file."""
    return not (name.endswith(".lock") or name.endswith(".tmp") or ".tmp." in name)


class Staging:
    """Local stand-ins for a command's gs:// paths (a local path is used as it is). `fetch` copies inputs here;
    `output` names where an output is written; `publish` uploads what the stage wrote or changed."""

    def __init__(self, root: str | None = None):
        self.root = root or scratch_root()
        self._outputs: list[tuple[str, bool]] = []  # (local prefix, whether this process alone writes it)
        self._synced: dict[str, int] = {}  # local file -> its mtime when last downloaded or uploaded
        # files older than this command are an earlier command's (this host's scratch outlives a command): never
        # uploaded, so a stale copy cannot replace what another host wrote since (a second of slack for the
        # filesystem's coarser clock)
        self._since_ns = time.time_ns() - 1_000_000_000

    def local(self, path: str) -> str:
        return os.path.join(self.root, *path[len(storage.REMOTE_PREFIX):].split("/"))

    def remote_of(self, local: str) -> str | None:
        """The gs:// path a file of the scratch folder stands for (None for a file elsewhere)."""
        relative = os.path.relpath(os.path.abspath(local), os.path.abspath(self.root))
        if relative.startswith(os.pardir) or os.path.isabs(relative):
            return None
        return storage.REMOTE_PREFIX + relative.replace(os.sep, "/")

    def name(self, path: str) -> str:
        """What the user called a path: the gs:// path a stand-in stands for, or the absolute local path."""
        return self.remote_of(path) or storage.absolute(path)

    def _get(self, remote: str, local: str) -> None:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        storage.download_file(remote, local)
        self._synced[local] = os.stat(local).st_mtime_ns

    def _prefix_files(self, path: str, *, shards: bool) -> list[str]:
        folder, base = posixpath.split(path)
        return [n for n in storage.listdir(folder) if _belongs(n, base, shards=shards) and _owned(n)]

    def _get_beside(self, path: str, names: list[str]) -> None:
        """The objects `names` of gs:// `path`'s folder, copied beside its stand-in."""
        folder = os.path.dirname(self.local(path))
        for name in names:
            self._get(posixpath.join(posixpath.dirname(path), name), os.path.join(folder, name))

    def fetch(self, path: str, *, prefix: bool = False) -> str:
        """An input: one gs:// file, or with `prefix` every file of a feature prefix (`{path}.*` and the shards
        `{path}_*`), copied here (local files of the prefix that the bucket no longer holds are removed)."""
        if not storage.is_remote(path):
            return path
        local = self.local(path)
        if not prefix:
            self._get(path, local)  # a missing object: storage.MissingError naming it
        else:
            names = self._prefix_files(path, shards=True)
            if not names:
                raise FileNotFoundError(f"{path}: no such features ({path}.npy/.len, or the shards {path}_R_N: write "
                                        f"them with `mfcc` or `dump` first)")
            folder, base = os.path.split(local)
            if os.path.isdir(folder):
                for stale in set(n for n in os.listdir(folder) if _belongs(n, base, shards=True)) - set(names):
                    os.remove(os.path.join(folder, stale))
            self._get_beside(path, names)
        return local

    def output(self, path: str, *, resume: bool = False, owner: bool = True) -> str:
        """Where to write output prefix `path` (the prefix itself when local). `resume`: the bucket's files of
        the prefix are copied here first (the record of what made them, finished shards or parts), for a stage
        that reuses what is done. `owner`: this process alone writes the prefix, so a `{path}.skipped` left in
        the bucket by an earlier run that this one did not write again is removed (as the stage removes it on
        a disk)."""
        if not storage.is_remote(path):
            return path
        local = self.local(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        if resume:
            self._get_beside(path, self._prefix_files(path, shards=False))
        self._outputs.append((local, owner))
        return local

    def sibling(self, local: str, suffix: str) -> str | None:
        """`local + suffix`, copied from the bucket first when `local` stands for a gs:// path; None when the bucket
        has no such object (a local path is returned as it is)."""
        remote = self.remote_of(local)
        if remote is None:
            return local + suffix
        remote += suffix
        if not storage.isfile(remote):
            return None
        self._get(remote, local + suffix)
        return local + suffix

    def remove(self, local: str) -> None:
        """Delete a file and, when it stands for a gs:// object, the object."""
        os.remove(local)
        self._synced.pop(local, None)
        remote = self.remote_of(local)
        if remote is not None and storage.exists(remote):
            storage.remove(remote)

    def publish(self) -> list[str]:
        """Upload every file of each output prefix that this command wrote or changed since it was last copied,
        the completion markers last; returns the gs:// paths written."""
        written = []
        for local, owner in self._outputs:
            folder, base = os.path.split(local)
            remote = self.remote_of(local)
            names = sorted((n for n in os.listdir(folder) if _belongs(n, base) and _owned(n)),
                           key=lambda n: {base + ".len": 1, base: 2}.get(n, 0))
            for name in names:
                path = os.path.join(folder, name)
                mtime = os.stat(path).st_mtime_ns
                if self._synced.get(path) == mtime or mtime < self._since_ns:
                    continue  # as it was copied from or to the bucket, or not written by this command
                target = posixpath.join(posixpath.dirname(remote), name)
                storage.upload_file(path, target)
                self._synced[path] = mtime
                written.append(target)
            skipped = f"{remote}.skipped"
            if owner and f"{base}.skipped" not in names and storage.exists(skipped):
                storage.remove(skipped)
        return written
