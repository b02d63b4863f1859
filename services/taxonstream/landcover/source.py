"""The indexer's land-cover raster: a local path or an object in S3, opened once per process on first use.

`TAXONSTREAM_LANDCOVER_RASTER=/data/cdl_2023.tif` or `s3://bucket/cdl/2023_30m_cdls.tif` (downloaded once
into `cache_dir`, kept while its size matches the object's). Until the raster can be read — S3 down, the
object not uploaded yet — adding shares raises `Transient`, so the worker retries the batch instead of
indexing records without them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from taxonstream.core.errors import Transient

if TYPE_CHECKING:
    from taxonstream.core.store import ObjectStore
    from taxonstream.landcover.tables import RecordCover

log = logging.getLogger(__name__)


def split_s3(source: str) -> tuple[str, str] | None:
    """`s3://bucket/key` → (bucket, key); None for a local path."""
    if not source.startswith("s3://"):
        return None
    bucket, _, key = source.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise ValueError(f"land-cover raster {source!r} is not s3://BUCKET/KEY")
    return bucket, key


def local_copy(source: str, store: ObjectStore | None, cache_dir: str) -> str:
    """A local path to the raster, downloading an s3:// one into `cache_dir` unless already there."""
    where = split_s3(source)
    if where is None:
        return source
    if store is None:
        raise ValueError(f"land-cover raster {source!r} is in S3 but no object store is configured")
    bucket, key = where
    target = Path(cache_dir) / bucket / key
    size = store.client.stat_object(bucket, key).size
    if not (target.is_file() and target.stat().st_size == size):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + f".part-{os.getpid()}")
        store.client.fget_object(bucket, key, str(partial))
        partial.replace(target)  # complete or absent: a killed download leaves only a .part file
        log.info("land-cover raster downloaded", extra={"source": source, "path": str(target), "bytes": size})
    return str(target)


class LandCover:
    """Adds LatLonCover's shares to records' metadata from one raster, opened on first use."""

    _shared: dict[str, LandCover] = {}
    _shared_lock = threading.Lock()

    def __init__(self, source: str, store: ObjectStore | None, cache_dir: str) -> None:
        self.source, self.store, self.cache_dir = source, store, cache_dir
        self._cover: RecordCover | None = None
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, source: str, store: ObjectStore | None, cache_dir: str) -> LandCover:
        """One per raster per process: every index version's worker shares it."""
        with cls._shared_lock:
            if source not in cls._shared:
                cls._shared[source] = cls(source, store, cache_dir)
            return cls._shared[source]

    def _open(self) -> RecordCover:
        with self._lock:
            if self._cover is None:
                from taxonstream.landcover.tables import RecordCover

                try:
                    self._cover = RecordCover(local_copy(self.source, self.store, self.cache_dir))
                except Exception as error:  # S3 down, object missing, unreadable file: retried, logged
                    raise Transient(f"land-cover raster {self.source}: {type(error).__name__}: {error}") from error
                log.info("land-cover raster open", extra={"source": self.source})
            return self._cover

    def add(self, metadata: Mapping[str, str]) -> dict[str, str]:
        return self._open().add(metadata)
