from taxonstream.v1 import messages_pb2 as _messages_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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
    __slots__ = ("sha256", "image", "max_distance")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    image: bytes
    max_distance: int
    def __init__(self, sha256: _Optional[str] = ..., image: _Optional[bytes] = ..., max_distance: _Optional[int] = ...) -> None: ...

class FindDuplicatesResponse(_message.Message):
    __slots__ = ("image_id", "record_ids", "near")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDS_FIELD_NUMBER: _ClassVar[int]
    NEAR_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    record_ids: _containers.RepeatedScalarFieldContainer[str]
    near: _containers.RepeatedCompositeFieldContainer[_messages_pb2.NearImage]
    def __init__(self, image_id: _Optional[str] = ..., record_ids: _Optional[_Iterable[str]] = ..., near: _Optional[_Iterable[_Union[_messages_pb2.NearImage, _Mapping]]] = ...) -> None: ...

class ExpectedChecksums(_message.Message):
    __slots__ = ("name", "sha256", "expected")
    class ExpectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    expected: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., expected: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BuddyCheckRequest(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[ExpectedChecksums]
    def __init__(self, rows: _Optional[_Iterable[_Union[ExpectedChecksums, _Mapping]]] = ...) -> None: ...

class BuddyCheckResult(_message.Message):
    __slots__ = ("name", "ok", "problem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    problem: str
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., problem: _Optional[str] = ...) -> None: ...

class BuddyCheckResponse(_message.Message):
    __slots__ = ("results", "mismatched", "missing")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MISMATCHED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BuddyCheckResult]
    mismatched: int
    missing: int
    def __init__(self, results: _Optional[_Iterable[_Union[BuddyCheckResult, _Mapping]]] = ..., mismatched: _Optional[int] = ..., missing: _Optional[int] = ...) -> None: ...

class JobManifestRequest(_message.Message):
    __slots__ = ("job_id", "format")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    format: str
    def __init__(self, job_id: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class JobManifestSummary(_message.Message):
    __slots__ = ("job_id", "key", "format", "algorithms", "records", "rows", "exact_duplicates", "near_duplicates", "without_row", "without_row_ids")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    EXACT_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_ROW_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_ROW_IDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    key: str
    format: str
    algorithms: _containers.RepeatedScalarFieldContainer[str]
    records: int
    rows: int
    exact_duplicates: int
    near_duplicates: int
    without_row: int
    without_row_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., key: _Optional[str] = ..., format: _Optional[str] = ..., algorithms: _Optional[_Iterable[str]] = ..., records: _Optional[int] = ..., rows: _Optional[int] = ..., exact_duplicates: _Optional[int] = ..., near_duplicates: _Optional[int] = ..., without_row: _Optional[int] = ..., without_row_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class JobManifestPart(_message.Message):
    __slots__ = ("data", "summary")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    summary: JobManifestSummary
    def __init__(self, data: _Optional[bytes] = ..., summary: _Optional[_Union[JobManifestSummary, _Mapping]] = ...) -> None: ...

class JobDuplicatesRequest(_message.Message):
    __slots__ = ("job_id", "max_distance")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    max_distance: int
    def __init__(self, job_id: _Optional[str] = ..., max_distance: _Optional[int] = ...) -> None: ...

class DuplicateSource(_message.Message):
    __slots__ = ("record_id", "job_id", "url")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    job_id: str
    url: str
    def __init__(self, record_id: _Optional[str] = ..., job_id: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class ExactDuplicateGroup(_message.Message):
    __slots__ = ("image_id", "sources")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    sources: _containers.RepeatedCompositeFieldContainer[DuplicateSource]
    def __init__(self, image_id: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[DuplicateSource, _Mapping]]] = ...) -> None: ...

class NearDuplicateMember(_message.Message):
    __slots__ = ("sha256", "image_id", "phash", "source", "in_job")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PHASH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    IN_JOB_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    image_id: str
    phash: str
    source: DuplicateSource
    in_job: bool
    def __init__(self, sha256: _Optional[str] = ..., image_id: _Optional[str] = ..., phash: _Optional[str] = ..., source: _Optional[_Union[DuplicateSource, _Mapping]] = ..., in_job: _Optional[bool] = ...) -> None: ...

class NearDuplicatePair(_message.Message):
    __slots__ = ("a", "b", "distance")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    distance: int
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ..., distance: _Optional[int] = ...) -> None: ...

class NearDuplicateGroup(_message.Message):
    __slots__ = ("members", "pairs")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[NearDuplicateMember]
    pairs: _containers.RepeatedCompositeFieldContainer[NearDuplicatePair]
    def __init__(self, members: _Optional[_Iterable[_Union[NearDuplicateMember, _Mapping]]] = ..., pairs: _Optional[_Iterable[_Union[NearDuplicatePair, _Mapping]]] = ...) -> None: ...

class JobDuplicatesResponse(_message.Message):
    __slots__ = ("job_id", "rows", "contents", "max_distance", "exact", "near")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CONTENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    NEAR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rows: int
    contents: int
    max_distance: int
    exact: _containers.RepeatedCompositeFieldContainer[ExactDuplicateGroup]
    near: _containers.RepeatedCompositeFieldContainer[NearDuplicateGroup]
    def __init__(self, job_id: _Optional[str] = ..., rows: _Optional[int] = ..., contents: _Optional[int] = ..., max_distance: _Optional[int] = ..., exact: _Optional[_Iterable[_Union[ExactDuplicateGroup, _Mapping]]] = ..., near: _Optional[_Iterable[_Union[NearDuplicateGroup, _Mapping]]] = ...) -> None: ...
