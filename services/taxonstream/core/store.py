"""Objects in S3 (MinIO in the cluster, Ceph RGW locally) through the `minio` client.

Originals are content-addressed, so storing the same bytes twice is a no-op; every other key is
derived from the image id and model version, so re-doing any step overwrites with the same thing.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from taxonstream.core import metrics
from taxonstream.core.errors import Transient
from taxonstream.core.keys import (
    BLOB_PREFIXES,
    derivative_keys,
    is_blob,
    job_records_key,
    job_records_prefix,
    original_key,
)
from taxonstream.core.objects import JSON_CONTENT_TYPE, JsonObjects, json_bytes
from taxonstream.core.settings import CoreSettings
from taxonstream.v1.messages_pb2 import FetchedImage

# The key functions are re-exported for callers that still import them from here (fetcher, detector,
# checksummer servicer, tests); new code imports taxonstream.core.keys.
__all__ = ["ObjectStore", "derivative_keys", "job_records_key", "job_records_prefix", "original_key"]
log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}


class ObjectStore(JsonObjects):
    """get_json/put_json come from JsonObjects, on this class's get and put."""

    def __init__(self, settings: CoreSettings) -> None:
        if not settings.s3_access_key or not settings.s3_secret_key:
            raise ValueError("S3 credentials missing: set TAXONSTREAM_S3_ACCESS_KEY and TAXONSTREAM_S3_SECRET_KEY")
        self.bucket = settings.s3_bucket
        self.blob_bucket = settings.s3_blob_bucket or settings.s3_bucket
        # Short retries here: a longer outage is the worker's to wait out (it backs off and retries).
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            maxsize=max(16, settings.s3_concurrency),
        )
        self.concurrency = settings.s3_concurrency
        # Shared by every get_many/put_many of the process: a bound on parallel requests, whoever asks.
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="s3")
        self.client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )

    def bucket_for(self, key: str) -> str:
        """Blobs (originals, derivatives) may live in a bucket of their own: core/keys.py says which keys."""
        return self.blob_bucket if is_blob(key) else self.bucket

    @functools.cached_property
    def _legacy_blobs(self) -> bool:
        """Blobs stored before they had a bucket of their own are still read from the main one (asked once)."""
        if self.blob_bucket == self.bucket:
            return False
        with _unavailable_is_transient():
            return any(
                next(iter(self.client.list_objects(self.bucket, prefix=prefix)), None) is not None
                for prefix in BLOB_PREFIXES
            )

    def _fallback_bucket(self, key: str) -> str | None:
        return self.bucket if is_blob(key) and self._legacy_blobs else None

    def ensure_bucket(self) -> None:
        with _unavailable_is_transient():
            for bucket in dict.fromkeys((self.bucket, self.blob_bucket)):
                if not self.client.bucket_exists(bucket):
                    try:
                        self.client.make_bucket(bucket)
                    except S3Error as error:
                        if error.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                            raise

    def exists(self, key: str) -> bool:
        with metrics.timed("s3"), _unavailable_is_transient():
            if self._in_bucket(self.bucket_for(key), key):
                return True
            fallback = self._fallback_bucket(key)
            return fallback is not None and self._in_bucket(fallback, key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with metrics.timed("s3"), _unavailable_is_transient():
            self.client.put_object(self.bucket_for(key), key, io.BytesIO(data), len(data), content_type=content_type)

    def put_original(self, data: bytes, sha256: str, content_type: str) -> tuple[str, bool]:
        """Store bytes under their sha256 unless already there; returns (key, newly_stored)."""
        key = original_key(sha256)
        if self.exists(key):
            return key, False
        self.put(key, data, content_type)
        return key, True

    def get(self, key: str) -> bytes:
        """The object's bytes; a missing object is KeyError (the message that names it is bad)."""
        with metrics.timed("s3"), _unavailable_is_transient():
            try:
                response = self.client.get_object(self.bucket_for(key), key)
            except S3Error as error:
                if error.code not in _MISSING:
                    raise
                fallback = self._fallback_bucket(key)
                if fallback is None:
                    raise KeyError(key) from error
                try:
                    response = self.client.get_object(fallback, key)
                except S3Error as again:
                    if again.code in _MISSING:
                        raise KeyError(key) from again
                    raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def list(self, prefix: str) -> list[str]:
        with metrics.timed("s3"), _unavailable_is_transient():
            return [
                o.object_name for o in self.client.list_objects(self.bucket_for(prefix), prefix=prefix, recursive=True)
            ]

    def delete(self, keys: list[str]) -> None:
        """Remove objects (a missing one is not an error): snapshot generations past their retention."""
        with _unavailable_is_transient():
            by_bucket: dict[str, list[DeleteObject]] = {}
            for key in keys:
                by_bucket.setdefault(self.bucket_for(key), []).append(DeleteObject(key))
            for bucket, objects in by_bucket.items():
                for error in self.client.remove_objects(bucket, objects):
                    # Left in place, it is removed by a later cleanup; nothing reads it meanwhile.
                    log.warning("could not delete an object", extra={"key": error.name, "error": error.code})

    def get_many(self, keys: Sequence[str]) -> list[bytes | Exception]:
        """Every key's bytes, fetched in parallel, in the order asked; a key that failed gives its error
        (KeyError: missing, Transient: S3 down) so each caller's message can fail alone."""
        return self.map(self.get, keys)

    def put_many(self, objects: Iterable[tuple[str, bytes, str]]) -> None:
        """Store (key, data, content type) objects in parallel; raises the first error once all have ended,
        so nothing is left in flight when the caller retries."""
        raise_first(self.map(lambda o: self.put(*o), list(objects)))

    def put_json_many(self, values: Mapping[str, Any]) -> None:
        self.put_many((k, json_bytes(v), JSON_CONTENT_TYPE) for k, v in values.items())

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R | Exception]:
        """`fn` over items on the store's pool (each result or its error, in order); one item runs inline."""
        return parallel_map(self._pool, fn, items)

    def presigned_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        bucket = self.bucket_for(key)
        fallback = self._fallback_bucket(key)
        if fallback is not None and not self._in_bucket(bucket, key):
            bucket = fallback  # a blob stored before blobs had a bucket of their own
        return self.client.presigned_get_object(bucket, key, expires=expires)

    def _in_bucket(self, bucket: str, key: str) -> bool:
        with _unavailable_is_transient():
            try:
                self.client.stat_object(bucket, key)
                return True
            except S3Error as error:
                if error.code in _MISSING:
                    return False
                raise


class _unavailable_is_transient:
    """Connection-level failures become Transient, so workers wait instead of failing records."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, _tb) -> bool:
        if error is None:
            return False
        if isinstance(error, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
            raise Transient(f"S3 unavailable: {error}") from error
        if isinstance(error, S3Error) and error.code in {"SlowDown", "ServiceUnavailable", "InternalError"}:
            raise Transient(f"S3 busy: {error.code}") from error
        return False


def carrying(get: Callable[[str], bytes], fetched: FetchedImage) -> Callable[[str], bytes]:
    """`get`, except that the message's own original is answered from the bytes it carries (the fetcher's
    `fetch_inline_max_bytes`): for a 7 kB JPEG the detector and embedder then make no S3 request for it."""
    if not fetched.data:
        return get
    return lambda key: fetched.data if key == fetched.object_key else get(key)


def parallel_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Sequence[T]) -> list[R | Exception]:
    """Each item's result or the exception it raised, in the items' order; waits for all of them."""

    def guarded(item: T) -> R | Exception:
        try:
            return fn(item)
        except Exception as error:  # noqa: BLE001 - handed back for the caller to sort
            return error

    if len(items) <= 1:
        return [guarded(item) for item in items]
    futures = [metrics.submit(pool, guarded, item) for item in items]
    return [future.result() for future in futures]


def raise_first(results: Iterable[object]) -> None:
    """Raise the first exception among results (a Transient before anything else: the batch is retried)."""
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise next((e for e in errors if isinstance(e, Transient)), errors[0])
