from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ChecksumRequest(_message.Message):
    __slots__ = ("data", "object_key", "algorithms")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    object_key: str
    algorithms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, data: _Optional[bytes] = ..., object_key: _Optional[str] = ..., algorithms: _Optional[_Iterable[str]] = ...) -> None: ...

class ChecksumResponse(_message.Message):
    __slots__ = ("digests", "size_bytes")
    class DigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.ScalarMap[str, str]
    size_bytes: int
    def __init__(self, digests: _Optional[_Mapping[str, str]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class FindDuplicatesRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class FindDuplicatesResponse(_message.Message):
    __slots__ = ("image_id", "record_ids")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    record_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image_id: _Optional[str] = ..., record_ids: _Optional[_Iterable[str]] = ...) -> None: ...
