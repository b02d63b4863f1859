"""What code above the core needs of an object store, and its JSON objects, written once.

The S3 `ObjectStore` (core/store.py), a batch's `StagedStore` (core/staging.py) and the registry's local
`DirectoryStore` (integrity/registry.py) all keep JSON the same way: sorted keys, so the same value is the
same bytes (an overwrite by a redelivered record changes nothing), and a missing object reads as None.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

JSON_CONTENT_TYPE = "application/json"


class Store(Protocol):
    """The calls snapshot generations (index/snapshots.py) and the duplicate registry make of a store."""

    def get(self, key: str) -> bytes: ...  # KeyError when missing
    def put(self, key: str, data: bytes) -> None: ...
    def get_json(self, key: str) -> Any | None: ...
    def put_json(self, key: str, value: Any) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, keys: list[str]) -> None: ...


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


class JsonObjects:
    """get_json/put_json on top of a class's own `get` (KeyError when missing) and `put(key, data, type)`;
    a class whose put takes no content type (a folder of files) sets `json_content_type = None`."""

    json_content_type: str | None = JSON_CONTENT_TYPE

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        raise NotImplementedError

    def get_json(self, key: str) -> Any | None:
        try:
            return json.loads(self.get(key))
        except KeyError:
            return None

    def put_json(self, key: str, value: Any) -> None:
        if self.json_content_type is None:
            self.put(key, json_bytes(value))
        else:
            self.put(key, json_bytes(value), self.json_content_type)
