"""Where media bytes live: a store addressed by storage keys (`media_assets.storage_key`).

A storage key is a relative path of plain segments (letters, digits, `.`, `_`, `-`; no segment
starting with `.`), so no key names anything outside the store's root, and a key that does after
symlinks are resolved is refused as well. Objects are written once: `put` refuses to replace a key
holding other bytes (an original is never overwritten); writing the same bytes again is a no-op,
so a retried job can store its output twice.

`LocalMediaStore` keeps objects under MEDIA_ROOT. Another backend (an object store) implements the
same protocol: `fetch` gives a local path a tool can read (the local store's own file, read only),
`put` takes a finished local file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CHUNK = 1024 * 1024
MAX_KEY_LENGTH = 512
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class UnsafeStorageKey(ValueError):
    """A storage key that is not a plain relative path inside the store (refused, never resolved)."""


class StorageConflict(RuntimeError):
    """A key already holds different bytes: objects are never overwritten."""


class ObjectMissing(FileNotFoundError):
    pass


@dataclass(frozen=True)
class StoredObject:
    key: str
    byte_size: int
    sha256: str


class MediaStore(Protocol):
    async def fetch(self, key: str, work_dir: Path) -> Path:
        """A local file with the object's bytes, readable until `work_dir` is removed (do not write to it)."""
        ...

    async def put(self, source: Path, key: str) -> StoredObject:
        """Store a finished local file under `key` (never replacing other bytes)."""
        ...

    async def stat(self, key: str) -> StoredObject | None:
        """The object's size and content hash; None when there is none."""
        ...

    async def discard(self, key: str) -> None:
        """Remove an object no asset refers to (a dead attempt's output); a missing one is fine."""
        ...


def check_key(key: str) -> str:
    """The key if it is a plain relative path of allowed segments; UnsafeStorageKey otherwise."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise UnsafeStorageKey(f"storage key must have 1 to {MAX_KEY_LENGTH} characters")
    segments = key.split("/")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise UnsafeStorageKey(
                f"storage key {key[:80]!r}: each segment is letters, digits, '.', '_' or '-', not starting with '.'"
            )
    return key


def sha256_of(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class LocalMediaStore:
    """Objects as files under `root` (MEDIA_ROOT)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    def path_for(self, key: str) -> Path:
        """The file of `key`, refusing keys (or symlinks on the way) that lead outside the root."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise UnsafeStorageKey(f"storage key {key[:80]!r} leads outside the media root")
        return path

    async def fetch(self, key: str, work_dir: Path) -> Path:
        path = self.path_for(key)
        if not path.is_file():
            raise ObjectMissing(f"no object stored under {key!r}")
        return path

    async def stat(self, key: str) -> StoredObject | None:
        path = self.path_for(key)
        if not path.is_file():
            return None
        size, digest = await asyncio.to_thread(sha256_of, path)
        return StoredObject(key, size, digest)

    async def put(self, source: Path, key: str) -> StoredObject:
        return await asyncio.to_thread(self._put, source, key)

    def _put(self, source: Path, key: str) -> StoredObject:
        dest = self.path_for(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Copied next to its destination under a name no key can have, then linked into place:
        # link() fails if the key exists, so nothing is ever replaced.
        partial = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.partial"
        digest = hashlib.sha256()
        size = 0
        try:
            with source.open("rb") as src, partial.open("xb") as out:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            partial.chmod(0o444)  # read-only: nothing of ours writes an object twice
            try:
                os.link(partial, dest)
            except FileExistsError:
                _, existing = sha256_of(dest)
                if existing != digest.hexdigest():
                    raise StorageConflict(f"storage key {key!r} already holds other bytes") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return StoredObject(key, size, digest.hexdigest())

    async def discard(self, key: str) -> None:
        path = self.path_for(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
