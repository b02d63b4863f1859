"""Detector gRPC API: detect and crop one image through the same Triton model the worker uses."""

from __future__ import annotations

from taxonstream.core.errors import Failed, InvalidArgument
from taxonstream.detector.worker import Detector, DetectorSettings, open_image
from taxonstream.v1 import detector_pb2, detector_pb2_grpc
from taxonstream.v1.messages_pb2 import Box


class DetectorServicer(detector_pb2_grpc.DetectorServicer):
    def __init__(self, settings: DetectorSettings, detector: Detector) -> None:
        self.settings = settings
        self.detector = detector

    def Detect(self, request, context) -> detector_pb2.DetectResponse:
        try:
            image = open_image(request.image, self.settings.detector_min_side)
        except Failed as failure:
            raise InvalidArgument(failure.message) from failure
        detection = self.detector.detect(image)
        left, top, right, bottom = detection.box
        return detector_pb2.DetectResponse(
            detected=detection.detected,
            box=Box(left=left, top=top, right=right, bottom=bottom),
            score=detection.score,
            width=detection.size[0],
            height=detection.size[1],
            crop=detection.crop_as_the_pipeline_reads_it(),
            model=self.settings.detector_model,
            model_version=self.settings.detector_model_version,
        )
