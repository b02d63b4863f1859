from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SourceRecord(_message.Message):
    __slots__ = ("url", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    URL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    url: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, url: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("record_id", "job_id", "row", "url", "metadata", "force")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    job_id: str
    row: int
    url: str
    metadata: _containers.ScalarMap[str, str]
    force: bool
    def __init__(self, record_id: _Optional[str] = ..., job_id: _Optional[str] = ..., row: _Optional[int] = ..., url: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., force: _Optional[bool] = ...) -> None: ...

class FetchedImage(_message.Message):
    __slots__ = ("record", "sha256", "object_key", "size_bytes", "mime", "width", "height", "attempts", "digests", "phash", "data")
    class DigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    PHASH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    record: Record
    sha256: str
    object_key: str
    size_bytes: int
    mime: str
    width: int
    height: int
    attempts: int
    digests: _containers.ScalarMap[str, str]
    phash: str
    data: bytes
    def __init__(self, record: _Optional[_Union[Record, _Mapping]] = ..., sha256: _Optional[str] = ..., object_key: _Optional[str] = ..., size_bytes: _Optional[int] = ..., mime: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., attempts: _Optional[int] = ..., digests: _Optional[_Mapping[str, str]] = ..., phash: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class NearImage(_message.Message):
    __slots__ = ("image_id", "distance")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    distance: int
    def __init__(self, image_id: _Optional[str] = ..., distance: _Optional[int] = ...) -> None: ...

class VerifiedImage(_message.Message):
    __slots__ = ("image_id", "fetched", "md5", "digests", "phash", "near")
    class DigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    FETCHED_FIELD_NUMBER: _ClassVar[int]
    MD5_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    PHASH_FIELD_NUMBER: _ClassVar[int]
    NEAR_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    fetched: FetchedImage
    md5: str
    digests: _containers.ScalarMap[str, str]
    phash: str
    near: _containers.RepeatedCompositeFieldContainer[NearImage]
    def __init__(self, image_id: _Optional[str] = ..., fetched: _Optional[_Union[FetchedImage, _Mapping]] = ..., md5: _Optional[str] = ..., digests: _Optional[_Mapping[str, str]] = ..., phash: _Optional[str] = ..., near: _Optional[_Iterable[_Union[NearImage, _Mapping]]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("left", "top", "right", "bottom")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    left: int
    top: int
    right: int
    bottom: int
    def __init__(self, left: _Optional[int] = ..., top: _Optional[int] = ..., right: _Optional[int] = ..., bottom: _Optional[int] = ...) -> None: ...

class Crop(_message.Message):
    __slots__ = ("image_id", "image", "crop_key", "detected", "box", "score", "model", "model_version")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CROP_KEY_FIELD_NUMBER: _ClassVar[int]
    DETECTED_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    image: VerifiedImage
    crop_key: str
    detected: bool
    box: Box
    score: float
    model: str
    model_version: str
    def __init__(self, image_id: _Optional[str] = ..., image: _Optional[_Union[VerifiedImage, _Mapping]] = ..., crop_key: _Optional[str] = ..., detected: _Optional[bool] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("image_id", "vector", "model", "model_version", "crop", "deleted", "lineage", "backfill")
    class LineageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    model: str
    model_version: str
    crop: Crop
    deleted: bool
    lineage: _containers.ScalarMap[str, str]
    backfill: bool
    def __init__(self, image_id: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., crop: _Optional[_Union[Crop, _Mapping]] = ..., deleted: _Optional[bool] = ..., lineage: _Optional[_Mapping[str, str]] = ..., backfill: _Optional[bool] = ...) -> None: ...

class ReembedImage(_message.Message):
    __slots__ = ("image_id", "crop_key", "lineage", "model", "model_version")
    class LineageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CROP_KEY_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    crop_key: str
    lineage: _containers.ScalarMap[str, str]
    model: str
    model_version: str
    def __init__(self, image_id: _Optional[str] = ..., crop_key: _Optional[str] = ..., lineage: _Optional[_Mapping[str, str]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("record_id", "job_id", "url", "state", "image_id", "stage", "reason", "message", "at_ms")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Outcome.State]
        INDEXED: _ClassVar[Outcome.State]
        DUPLICATE: _ClassVar[Outcome.State]
        FAILED: _ClassVar[Outcome.State]
    STATE_UNSPECIFIED: Outcome.State
    INDEXED: Outcome.State
    DUPLICATE: Outcome.State
    FAILED: Outcome.State
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    job_id: str
    url: str
    state: Outcome.State
    image_id: str
    stage: str
    reason: str
    message: str
    at_ms: int
    def __init__(self, record_id: _Optional[str] = ..., job_id: _Optional[str] = ..., url: _Optional[str] = ..., state: _Optional[_Union[Outcome.State, str]] = ..., image_id: _Optional[str] = ..., stage: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., at_ms: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "source", "total", "created_ms", "cancelled")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    source: str
    total: int
    created_ms: int
    cancelled: bool
    def __init__(self, job_id: _Optional[str] = ..., source: _Optional[str] = ..., total: _Optional[int] = ..., created_ms: _Optional[int] = ..., cancelled: _Optional[bool] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("topic", "partition", "offset", "key", "value", "stage", "reason", "at_ms")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    stage: str
    reason: str
    at_ms: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., stage: _Optional[str] = ..., reason: _Optional[str] = ..., at_ms: _Optional[int] = ...) -> None: ...
