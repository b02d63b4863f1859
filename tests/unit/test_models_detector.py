"""Detector service logic: best box -> padded crop (hand-computed), whole image when nothing is found,
256-px derivatives of original and crop and the lineage record under the image id and model version.

The model is replaced by a fake that returns the drawn specimen's box: the stand-in detector's random
weights do not locate anything, so this checks everything the service does with a detection.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image, ImageDraw

from taxonstream.core.store import derivative_keys
from taxonstream.detector.worker import Detector, DetectorSettings, DetectWorker, shorter_side
from taxonstream.v1.messages_pb2 import FetchedImage, Record, VerifiedImage

# One specimen drawn at (100, 60)-(220, 180) on a 400 x 300 white background.
SIZE = (400, 300)
SPECIMEN = (100, 60, 220, 180)
SPECIMEN_CXCYWH = (160 / 400, 120 / 300, 120 / 400, 120 / 300)


def _specimen_image() -> Image.Image:
    image = Image.new("RGB", SIZE, "white")
    ImageDraw.Draw(image).ellipse(SPECIMEN, fill=(120, 60, 20))
    return image


class FakeModel:
    def __init__(self, best_score: float) -> None:
        self.best_score = best_score

    def input_shape(self) -> list[int]:
        return [-1, 3, 256, 256]

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        batch = inputs["images"].shape[0]
        boxes = np.tile(np.asarray([0.5, 0.5, 0.9, 0.9], np.float32), (batch, 8, 1))
        scores = np.full((batch, 8), 0.1, np.float32)
        boxes[:, 3] = SPECIMEN_CXCYWH
        scores[:, 3] = self.best_score
        return {"boxes": boxes, "scores": scores}


class FakeStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str = "") -> None:
        self.objects[key] = data

    def put_json(self, key: str, value: object) -> None:
        self.objects[key] = json.dumps(value).encode()


def _detector(score: float) -> Detector:
    detector = Detector(DetectorSettings())
    detector.model = FakeModel(score)
    return detector


def test_best_box_is_enlarged_1_4x_about_its_centre() -> None:
    detection = _detector(0.9).detect(_specimen_image())
    # Hand-computed: centre (160, 120), 120 x 120 px -> 168 x 168 px: 76..244 and 36..204.
    assert detection.detected and detection.score == np.float32(0.9)
    assert detection.box == (76, 36, 244, 204)
    assert detection.size == SIZE
    crop = Image.open(io.BytesIO(detection.crop_jpeg))
    assert crop.size == (168, 168)
    centre = crop.getpixel((84, 84))
    assert abs(centre[0] - 120) < 8 and abs(centre[2] - 20) < 8  # the specimen sits in the middle
    corner = crop.getpixel((2, 2))
    assert min(corner) > 240  # with background around it


def test_crop_pad_is_configurable() -> None:
    detector = Detector(DetectorSettings(detector_crop_pad=1.0))
    detector.model = FakeModel(0.9)
    assert detector.detect(_specimen_image()).box == SPECIMEN


def test_nothing_detected_keeps_the_whole_image_and_says_so() -> None:
    detection = _detector(0.2).detect(_specimen_image())
    assert not detection.detected
    assert detection.box == (0, 0, *SIZE)
    assert Image.open(io.BytesIO(detection.crop_jpeg)).size == SIZE


def test_shorter_side_derivative() -> None:
    assert shorter_side(Image.new("RGB", (1000, 500)), 256).size == (512, 256)
    assert shorter_side(Image.new("RGB", (300, 900)), 256).size == (256, 768)
    small = Image.new("RGB", (100, 50))
    assert shorter_side(small, 256) is small  # never enlarged


def test_worker_stores_derivatives_and_lineage_under_image_id_and_model_version() -> None:
    settings = DetectorSettings()
    store = FakeStore()
    worker = DetectWorker(settings, bus=None, store=store, detector=_detector(0.9))
    fetched = FetchedImage(record=Record(record_id="j:0", job_id="j"), object_key="originals/sha256/ab/cd/abc123")
    verified = VerifiedImage(image_id="abc123", fetched=fetched)
    image = _specimen_image()
    inferred = worker.run([image])[0]
    detection = worker.detector.finish(*inferred)
    key = worker.store_derivatives(verified, image, detection)
    keys = derivative_keys("abc123", "detector_standin", "1")
    # A 400 x 300 original stores only its lineage: it is its own crop source (key + box) and small copy.
    assert key == fetched.object_key
    assert set(store.objects) == {keys["lineage"]}
    lineage = json.loads(store.objects[keys["lineage"]])
    assert lineage["stored"] == [] and lineage["keys"]["crop"] == fetched.object_key
    assert lineage["box"] == [76, 36, 244, 204] and lineage["original_size"] == [400, 300]
    assert lineage["detected"] is True and lineage["pad"] == 1.4
    assert (lineage["model"], lineage["model_version"]) == ("detector_standin", "1")
