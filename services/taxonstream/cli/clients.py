"""How commands reach the running services: addresses, channels, S3, and the index-query flags they share.

Addresses: `TAXONSTREAM_<SERVICE>_ADDR`, else the local stack's port on loopback. Credentials: `--token` or
TAXONSTREAM_TOKEN, TLS with TAXONSTREAM_TLS_CA. S3: `TAXONSTREAM_S3_*`, else the keys the local stack wrote to
.stack/s3.env.
"""

from __future__ import annotations

import os

import grpc

from taxonstream.fetching.inputs import InputError

# Listings, thumbnails and vectors come back in large messages; images go out in them.
MESSAGE_BYTES = 64 << 20


def address(service: str) -> str:
    from taxonstream.core.settings import loopback_address

    return os.environ.get(f"TAXONSTREAM_{service.upper()}_ADDR", loopback_address(service))


def token() -> str:
    """The bearer token the services were started with: `--token`, else TAXONSTREAM_TOKEN, else none."""
    return os.environ.get("TAXONSTREAM_TOKEN", "")


def use_token(value: str) -> None:
    """`--token`: for this command's calls (and the commands it starts), as if TAXONSTREAM_TOKEN were set."""
    os.environ["TAXONSTREAM_TOKEN"] = value


def channel(service: str) -> grpc.Channel:
    """A channel to a service with the deployment's credentials: the token, and TLS verified against
    TAXONSTREAM_TLS_CA when set."""
    from taxonstream.core.channels import CredentialsError, open_channel

    options = [("grpc.max_receive_message_length", MESSAGE_BYTES), ("grpc.max_send_message_length", MESSAGE_BYTES)]
    try:
        return open_channel(
            address(service), token=token(), ca_file=os.environ.get("TAXONSTREAM_TLS_CA", ""), options=options
        )
    except CredentialsError as error:
        raise InputError(str(error)) from None


def object_store(bucket: str | None = None):
    """The S3 store the local stack created, unless TAXONSTREAM_S3_* say otherwise."""
    from taxonstream.core.local_stack import s3_env
    from taxonstream.core.settings import CoreSettings
    from taxonstream.core.store import ObjectStore

    local = {k.removeprefix("TAXONSTREAM_").lower(): v for k, v in s3_env().items() if k not in os.environ}
    if bucket:
        local["s3_bucket"] = bucket
    return ObjectStore(CoreSettings(**local))


def index_filters(expressions: list[str]) -> list:
    """`--filter genus=Apis,Bombus` / `--filter F_small>=0.5` flags as indexer Filters: values of one flag
    OR, flags AND. `=` on a facet (kingdom … species, provider, licence) lists values; on any other
    metadata column, and `>`, `>=`, `<`, `<=`, it compares numbers (index/comparisons.py)."""
    from taxonstream.index.comparisons import Numeric, number, split_expression
    from taxonstream.index.filters import is_facet
    from taxonstream.v1 import indexer_pb2

    found = []
    for expression in expressions:
        try:
            field, op, text = split_expression(expression)
        except ValueError:
            raise InputError(
                f"--filter wants FIELD=VALUE[,VALUE…] or COLUMN>=NUMBER (> >= < <= =), not {expression!r}"
            ) from None
        values = [v.strip() for v in text.split(",")]
        if op == "=" and (is_facet(field) or any(number(v) is None for v in values)):
            # text values: the index's own filter, which names the columns it can filter on
            found.append(indexer_pb2.Filter(field=field, values=values))
            continue
        try:
            Numeric.of(op, values)
        except ValueError as error:
            raise InputError(f"--filter {expression!r}: {error}") from None
        found.append(indexer_pb2.Filter(field=field, values=values, op=op))
    return found


def version_key(text: str):
    """MODEL or MODEL/VERSION as an index version key."""
    from taxonstream.index.versions import VersionKey

    try:
        return VersionKey.parse(text)
    except ValueError as error:
        raise InputError(str(error)) from None


def index_version(text: str | None) -> dict[str, str]:
    """`--model MODEL[/VERSION]` as request fields; none: the serving index version."""
    if not text:
        return {}
    try:
        key = version_key(text)
    except InputError as error:
        raise InputError(f"--model: {error}") from None
    return {"model": key.model, "model_version": key.version}
