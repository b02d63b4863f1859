"""Models through the real Triton: parity with in-process torch, text embeddings, Classify, predict CLI."""

from __future__ import annotations

import io
import subprocess
import sys

import grpc
import numpy as np
import pytest
from PIL import Image

from taxonstream.classify.service import store_bank
from taxonstream.classify.templates import prompts
from taxonstream.classify.zeroshot import RANKS, LabelBank, label_embeddings, probabilities
from taxonstream.models.clip_standin import build_clip_standin, build_clip_text_standin
from taxonstream.models.preprocess import clip_pixel_values
from taxonstream.models.synthetic import shapes_image
from taxonstream.models.tokenizer import ClipTokenizer
from taxonstream.v1 import detector_pb2, embedder_pb2, indexer_pb2
from tools.demo.sample import GENERA

torch = pytest.importorskip("torch")
COSINE = 0.9999


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def _torch_image_vectors(images: list[Image.Image]) -> np.ndarray:
    with torch.no_grad():
        out = build_clip_standin()(torch.from_numpy(np.stack([clip_pixel_values(i) for i in images]))).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _torch_text_vectors(texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        out = build_clip_text_standin()(torch.from_numpy(ClipTokenizer()(texts))).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _vectors(response) -> np.ndarray:
    return np.asarray([v.values for v in response.vectors], dtype=np.float32)


def test_image_embeddings_through_triton_equal_in_process_torch(embedder):
    base = shapes_image(11, size=(300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; the embedder turns it upright first, like the in-process path
    cases = {
        "jpeg": _encode(base, "JPEG", quality=95),
        "rgba": _encode(base.convert("RGBA"), "PNG"),
        "grey": _encode(base.convert("L"), "PNG"),
        "cmyk": _encode(base.convert("CMYK"), "JPEG", quality=95),
        "exif-rotated": _encode(base.rotate(90, expand=True), "JPEG", quality=95, exif=exif),
        "tiny": _encode(shapes_image(12, size=(9, 9)), "PNG"),
    }
    response = embedder.EmbedImages(embedder_pb2.EmbedImagesRequest(images=list(cases.values())), timeout=120)
    served = _vectors(response)
    expected = _torch_image_vectors([Image.open(io.BytesIO(data)) for data in cases.values()])
    cosines = np.sum(served * expected, axis=1)
    assert cosines.min() >= COSINE, dict(zip(cases, cosines.round(6), strict=True))
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert (response.model, response.model_version) == ("clip_standin_image", "1")
    # The EXIF-rotated copy is the same picture as the upright one, not a rotated one.
    assert float(served[4] @ served[0]) > float(served[4] @ _torch_image_vectors([base.rotate(90, expand=True)])[0])


def test_text_embeddings_through_triton_equal_in_process_torch(embedder):
    texts = ["a photo of Danaus plexippus.", "Animalia Arthropoda Insecta", "moth " * 100, ""]
    response = embedder.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=texts), timeout=120)
    served = _vectors(response)
    assert served.shape == (4, 512)
    assert np.sum(served * _torch_text_vectors(texts), axis=1).min() >= COSINE
    # More texts than one Triton request takes: split and reassembled in order.
    many = [f"label {i}" for i in range(300)]
    served_many = _vectors(embedder.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=many), timeout=300))
    assert (
        np.sum(served_many[[0, 150, 299]] * _torch_text_vectors([many[0], many[150], many[299]]), axis=1).min()
        >= COSINE
    )


def test_bad_inputs_are_invalid_arguments(embedder):
    for request in (embedder_pb2.EmbedImagesRequest(images=[b"not an image"]), embedder_pb2.EmbedImagesRequest()):
        with pytest.raises(grpc.RpcError) as caught:
            embedder.EmbedImages(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        embedder.EmbedTexts(embedder_pb2.EmbedTextsRequest(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_zero_shot_matches_the_recipe_computed_in_process(indexer, detector):
    image = _encode(shapes_image(21), "JPEG", quality=92)
    labels = ["monarch butterfly", "ground beetle", "bumble bee"]
    response = indexer.Classify(indexer_pb2.ClassifyRequest(image=image, labels=labels, k=3), timeout=600)
    assert response.rank == "" and (response.model, response.model_version) == ("clip_standin_image", "1")

    crop = detector.Detect(detector_pb2.DetectRequest(image=image), timeout=60).crop
    image_vector = _torch_image_vectors([Image.open(io.BytesIO(crop))])[0]
    label_vectors = label_embeddings(_torch_text_vectors(prompts(labels)), len(labels))
    expected = probabilities(image_vector, label_vectors)
    got = {p.label: p.score for p in response.predictions}
    assert sorted(got) == sorted(labels)
    assert [p.label for p in response.predictions] == [labels[i] for i in np.argsort(-expected)]
    np.testing.assert_allclose([got[label] for label in labels], expected, atol=2e-3)
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-4)


def test_rank_prediction_sums_species_per_taxon(indexer, store, embedder):
    orders = {
        "Danaus": "Lepidoptera",
        "Papilio": "Lepidoptera",
        "Pieris": "Lepidoptera",
        "Bombus": "Hymenoptera",
        "Carabus": "Coleoptera",
        "Coccinella": "Coleoptera",
    }
    names = [
        [["Animalia", "Arthropoda", "Insecta", orders[genus], family, genus, epithet], ""]
        for genus, epithet, family in GENERA
    ]
    texts = [" ".join(n[0]) for n in names]
    vectors = _vectors(
        embedder.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=prompts(texts, ["a photo of {}."])), timeout=120)
    )
    bank = LabelBank.from_arrays(vectors.T, names)
    store_bank(store, "test-insects", bank, "clip_standin_image", "1")
    image = _encode(shapes_image(31), "JPEG", quality=92)

    def classify(rank: str) -> dict[str, float]:
        request = indexer_pb2.ClassifyRequest(image=image, rank=rank, k=50, bank="test-insects")
        response = indexer.Classify(request, timeout=300)
        assert response.rank == rank
        return {" ".join(p.taxon): p.score for p in response.predictions}

    species = classify("species")
    assert len(species) == len(GENERA) and sum(species.values()) == pytest.approx(1.0, abs=1e-4)
    for rank in ("genus", "order", "kingdom"):
        depth = RANKS.index(rank) + 1
        summed: dict[str, float] = {}
        for taxon, p in species.items():
            key = " ".join(taxon.split()[:depth])
            summed[key] = summed.get(key, 0.0) + p
        got = classify(rank)
        assert got.keys() == summed.keys()
        for key, p in summed.items():
            assert got[key] == pytest.approx(p, abs=1e-4)

    with pytest.raises(grpc.RpcError) as caught:
        indexer.Classify(indexer_pb2.ClassifyRequest(image=image, rank="genus", bank="no-such-bank"), timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no label bank" in caught.value.details()


def test_predict_cli_prints_a_table(tmp_path, local_stack):
    path = tmp_path / "moth.jpg"
    shapes_image(41).save(path, format="JPEG")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "taxonstream.cli.main",
            "predict",
            str(path),
            "--labels",
            "moth",
            "beetle",
            "--templates",
            "single",
            "-k",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["file_name", "classification", "score"]
    assert {line.split()[1] for line in lines[1:]} == {"moth", "beetle"}
    assert sum(float(line.split()[-1]) for line in lines[1:]) == pytest.approx(1.0, abs=1e-4)
