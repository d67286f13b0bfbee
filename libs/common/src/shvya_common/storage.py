"""Where received media and attachments are kept: a small storage interface and its local-folder
implementation.

Files are content-addressed: the key is `<company>/<sha256[:2]>/<sha256>`, so the same file
received twice is stored once and a key can never point at other bytes. Writes go to a temporary
file that is renamed into place, so a crash never leaves a half-written file under a real key.
Blocking file work runs in a thread. Other back ends (S3-compatible) implement `MediaStore`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_KEY = re.compile(r"^[0-9a-f-]{36}/[0-9a-f]{2}/[0-9a-f]{64}$")


class MediaNotFound(LookupError):
    """No stored file has this key."""


@dataclass(frozen=True)
class StoredMedia:
    """What the store knows of one file; `key` is how to read it back."""

    key: str
    sha256: str
    size: int
    mime_type: str


class MediaStore(Protocol):
    async def put(self, company_id: uuid.UUID, data: bytes, mime_type: str) -> StoredMedia: ...
    async def get(self, key: str) -> bytes: ...
    async def delete(self, key: str) -> None: ...


def media_key(company_id: uuid.UUID, sha256: str) -> str:
    return f"{company_id}/{sha256[:2]}/{sha256}"


class LocalMediaStore:
    """Files under one folder, one sub-folder per company."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise MediaNotFound(f"not a media key: {key!r}")
        return self.root / key

    async def put(self, company_id: uuid.UUID, data: bytes, mime_type: str) -> StoredMedia:
        digest = hashlib.sha256(data).hexdigest()
        key = media_key(company_id, digest)
        await asyncio.to_thread(self._write, self._path(key), data)
        return StoredMedia(key, digest, len(data), mime_type)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise MediaNotFound(key) from None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)
