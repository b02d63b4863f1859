"""Blobs (originals, derivatives) in a bucket of their own; blobs stored before still found in the main one."""

from __future__ import annotations

import io
from types import SimpleNamespace

from minio.error import S3Error

from taxonstream.core.keys import derivative_keys, is_blob, job_records_key, original_key
from taxonstream.core.settings import CoreSettings
from taxonstream.core.store import ObjectStore

SHA = "ab" * 32


class FakeMinio:
    """Just enough of minio.Minio: objects per bucket, and the calls made."""

    def __init__(self, buckets: dict[str, dict[str, bytes]]) -> None:
        self.buckets = buckets
        self.calls: list[tuple[str, str, str]] = []

    def _missing(self, key: str) -> S3Error:
        return S3Error(SimpleNamespace(status=404, headers={}, data=b""), "NoSuchKey", "missing", key, "r", "h")

    def put_object(self, bucket, key, data, length, content_type=""):
        self.calls.append(("put", bucket, key))
        self.buckets.setdefault(bucket, {})[key] = data.read(length)

    def get_object(self, bucket, key):
        self.calls.append(("get", bucket, key))
        if key not in self.buckets.get(bucket, {}):
            raise self._missing(key)
        body = io.BytesIO(self.buckets[bucket][key])
        body.release_conn = lambda: None
        return body

    def stat_object(self, bucket, key):
        self.calls.append(("stat", bucket, key))
        if key not in self.buckets.get(bucket, {}):
            raise self._missing(key)

    def presigned_get_object(self, bucket, key, expires=None):
        return f"http://s3/{bucket}/{key}"

    def list_objects(self, bucket, prefix="", recursive=False):
        self.calls.append(("list", bucket, prefix))
        return [SimpleNamespace(object_name=k) for k in sorted(self.buckets.get(bucket, {})) if k.startswith(prefix)]


def store(buckets: dict[str, dict[str, bytes]], blob_bucket: str = "blobs") -> tuple[ObjectStore, FakeMinio]:
    settings = CoreSettings(s3_access_key="k", s3_secret_key="s", s3_bucket="main", s3_blob_bucket=blob_bucket)
    s = ObjectStore(settings)
    s.client = FakeMinio(buckets)
    return s, s.client


def test_only_originals_and_derivatives_are_blobs():
    assert is_blob(original_key(SHA))
    assert all(is_blob(key) for key in derivative_keys(SHA, "m", "1").values())
    assert not is_blob(job_records_key("job", 0))


def test_blobs_go_to_the_blob_bucket_and_the_rest_to_the_main_one():
    s, client = store({})
    s.put(original_key(SHA), b"image")
    s.put(job_records_key("job", 0), b"{}")
    assert client.buckets == {"blobs": {original_key(SHA): b"image"}, "main": {job_records_key("job", 0): b"{}"}}
    assert s.get(original_key(SHA)) == b"image"


def test_a_blob_stored_before_the_blob_bucket_is_read_from_the_main_one():
    s, _ = store({"main": {original_key(SHA): b"old"}, "blobs": {}})
    assert s.exists(original_key(SHA))
    assert s.get(original_key(SHA)) == b"old"
    assert s.presigned_url(original_key(SHA)) == f"http://s3/main/{original_key(SHA)}"
    s.put(original_key("cd" * 32), b"new")
    assert s.presigned_url(original_key("cd" * 32)) == f"http://s3/blobs/{original_key('cd' * 32)}"


def test_without_legacy_blobs_a_missing_blob_costs_one_request_per_ask():
    s, client = store({"main": {job_records_key("job", 0): b"{}"}, "blobs": {}})
    assert not s.exists(original_key(SHA))  # the first ask also looks once whether the main bucket has blobs
    client.calls.clear()
    assert not s.exists(original_key("cd" * 32))
    assert client.calls == [("stat", "blobs", original_key("cd" * 32))]


def test_one_bucket_when_no_blob_bucket_is_set():
    s, client = store({}, blob_bucket="")
    s.put(original_key(SHA), b"image")
    assert list(client.buckets) == ["main"]
