"""`python -m taxonstream.detector`: the Detect API and the worker verified → cropped."""

from __future__ import annotations

from taxonstream.core.server import Service, connect, registrar, run
from taxonstream.core.worker import model_stage
from taxonstream.detector.servicer import DetectorServicer
from taxonstream.detector.worker import STAGE, Detector, DetectorSettings, DetectWorker
from taxonstream.v1 import detector_pb2, detector_pb2_grpc
from taxonstream.v1.messages_pb2 import VerifiedImage


def build(settings: DetectorSettings) -> Service:
    bus, store = connect(settings)
    detector = Detector(settings)
    work = DetectWorker(settings, bus, store, detector)
    worker = model_stage(
        settings, bus, STAGE, bus.topics.verified, VerifiedImage, work.prepare, work.run, work.finish, work.pixels
    )
    servicer = DetectorServicer(settings, detector)

    return Service(
        name=STAGE,
        register=registrar(detector_pb2, "Detector", detector_pb2_grpc.add_DetectorServicer_to_server, servicer),
        loops=[worker.run],
    )


if __name__ == "__main__":
    run(STAGE, DetectorSettings, build)
