from taxonstream.v1 import messages_pb2 as _messages_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectRequest(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    def __init__(self, image: _Optional[bytes] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("detected", "box", "score", "width", "height", "crop", "model", "model_version")
    DETECTED_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    detected: bool
    box: _messages_pb2.Box
    score: float
    width: int
    height: int
    crop: bytes
    model: str
    model_version: str
    def __init__(self, detected: _Optional[bool] = ..., box: _Optional[_Union[_messages_pb2.Box, _Mapping]] = ..., score: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., crop: _Optional[bytes] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...
