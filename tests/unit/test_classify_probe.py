"""Linear probe: trains on separable embeddings, agrees with scikit-learn, survives a JSON round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from taxonstream.classify.probe import Probe, train  # noqa: E402


def _blobs(classes: list[str], per_class: int = 40, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(classes), dim)) * 3
    vectors = np.concatenate([c + rng.normal(size=(per_class, dim)) for c in centres])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, [label for label in classes for _ in range(per_class)]


@pytest.mark.parametrize("classes", [["clean", "mercury"], ["a", "b", "c"]])
def test_probe_separates_and_matches_sklearn(classes: list[str], tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    vectors, labels = _blobs(classes)
    probe = train(vectors, labels, "clip", "1")
    predicted = [label for label, _ in probe.predict(vectors)]
    assert np.mean([p == t for p, t in zip(predicted, labels, strict=True)]) > 0.95
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(vectors, labels)
    np.testing.assert_allclose(probe.probabilities(vectors), reference.predict_proba(vectors), atol=1e-6)
    probe.save(tmp_path / "probe.json")
    again = Probe.load(tmp_path / "probe.json")
    np.testing.assert_allclose(again.probabilities(vectors), probe.probabilities(vectors))
    assert (again.model, again.model_version, again.classes) == ("clip", "1", sorted(classes))


def test_probe_needs_two_classes() -> None:
    with pytest.raises(ValueError):
        train(np.eye(3), ["x", "x", "x"], "clip", "1")


# The stored-vector path: labelled CSV -> keys -> stored vectors, and scoring stored images.

from taxonstream.classify.probe import (  # noqa: E402
    ProbeError,
    StoredImage,
    match_stored,
    output_header,
    read_labelled,
    score_rows,
)


def _stored(count: int, model: str = "clip/1", dim: int = 4) -> list[StoredImage]:
    rng = np.random.default_rng(1)
    return [
        StoredImage(
            f"id{i}",
            {
                "model": model,
                "sha256": f"sha{i}",
                "url": f"http://x/{i}.jpg",
                "record_id": f"job:{i}",
                "job_id": "job",
                "catalogNumber": f"C{i}",
            },
            rng.normal(size=dim).tolist(),
        )
        for i in range(count)
    ]


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_read_labelled_picks_the_key_column(tmp_path: Path) -> None:
    assert read_labelled(_csv(tmp_path, "image,label\na.jpg,x\n")).key == "image"
    labelled = read_labelled(_csv(tmp_path, "\ufeffsha256 , label\nsha1,clean\n,clean\nsha2,\nsha3,mercury\n"))
    assert labelled.key == "sha256" and labelled.rows == [("sha1", "clean"), ("sha3", "mercury")]
    both = _csv(tmp_path, "image,image_id,label\na.jpg,id1,x\n")
    assert read_labelled(both).key == "image" and read_labelled(both, "image_id").rows == [("id1", "x")]
    for text, message in [
        ("image_id\nid1\n", "'label' column"),
        ("name,label\na,x\n", "naming the images"),
        ("image_id,label\nid1,\n", "no row"),
    ]:
        with pytest.raises(ProbeError, match=message):
            read_labelled(_csv(tmp_path, text))
    with pytest.raises(ProbeError, match="no 'url' column"):
        read_labelled(_csv(tmp_path, "image_id,label\nid1,x\n"), "url")


@pytest.mark.parametrize("key", ["image_id", "sha256", "url", "record_id"])
def test_match_stored_by_any_key_keeps_file_order(key: str, tmp_path: Path) -> None:
    images = _stored(5)
    values = {i.image_id: i.key(key) for i in images}
    labelled = read_labelled(_csv(tmp_path, f"{key},label\n{values['id3']},b\n{values['id0']},a\n{values['id3']},b\n"))
    vectors, labels, model, missing = match_stored(labelled, iter(images))
    assert labels == ["b", "a", "b"] and model == ("clip", "1") and missing == []
    np.testing.assert_array_equal(
        vectors, np.asarray([images[3].vector, images[0].vector, images[3].vector], np.float32)
    )


def test_match_stored_lists_unknown_keys_unless_told_to_skip(tmp_path: Path) -> None:
    labelled = read_labelled(_csv(tmp_path, "image_id,label\nid0,a\nnope1,a\nid1,b\nnope2,b\n"))
    with pytest.raises(ProbeError, match=r"2 of the labelled image_ids are not in the index: nope1, nope2"):
        match_stored(labelled, _stored(3))
    vectors, labels, _, missing = match_stored(labelled, _stored(3), allow_missing=True)
    assert len(vectors) == 2 and labels == ["a", "b"] and missing == ["nope1", "nope2"]
    with pytest.raises(ProbeError, match="none of the labelled"):
        match_stored(read_labelled(_csv(tmp_path, "image_id,label\nx,a\n")), _stored(3), allow_missing=True)


def test_match_stored_refuses_mixed_or_unnamed_models(tmp_path: Path) -> None:
    labelled = read_labelled(_csv(tmp_path, "image_id,label\nid0,a\nid1,b\n"))
    mixed = _stored(1) + [StoredImage("id1", {"model": "bioclip_image/1"}, [0.0, 1.0, 0.0, 0.0])]
    with pytest.raises(ProbeError, match="more than one model"):
        match_stored(labelled, mixed)
    with pytest.raises(ProbeError, match="does not say which model"):
        match_stored(labelled, _stored(2, model=""))


def test_training_needs_two_classes_and_names_the_one_there(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="every row is 'clean'"):
        train(np.eye(3), ["clean"] * 3, "clip", "1")


def test_score_rows_writes_probabilities_and_metadata_and_refuses_another_model() -> None:
    vectors, labels = _blobs(["clean", "mercury"], dim=4)
    probe = train(vectors, labels, "clip", "1", source="index")
    assert (probe.source, probe.examples) == ("index", 80)
    images = _stored(3)
    header = output_header(probe, ["catalogNumber"])
    rows = score_rows(probe, images, ["catalogNumber"])
    assert header == [
        "image_id",
        "label",
        "probability",
        "p_clean",
        "p_mercury",
        "job_id",
        "record_id",
        "url",
        "sha256",
        "catalogNumber",
    ]
    expected = probe.probabilities(np.asarray([i.vector for i in images], np.float32))
    for row, image, probs in zip(rows, images, expected, strict=True):
        record = dict(zip(header, row, strict=True))
        assert record["image_id"] == image.image_id and record["catalogNumber"] == image.metadata["catalogNumber"]
        assert record["label"] == probe.classes[int(probs.argmax())]
        assert float(record["probability"]) == pytest.approx(probs.max(), abs=1e-6)
        assert float(record["p_clean"]) + float(record["p_mercury"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ProbeError, match="trained on clip/1 embeddings, stored image id0 has bioclip_image/1"):
        score_rows(probe, _stored(1, model="bioclip_image/1"))
    with pytest.raises(ProbeError, match="takes 4-d vectors"):
        score_rows(probe, _stored(1, dim=8))


def test_probe_load_reads_older_files_and_refuses_others(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(
        '{"classes": ["a", "b"], "coef": [[1.0, 0.0]], "intercept": [0.0], "model": "clip", "model_version": "1"}'
    )
    assert Probe.load(old).source == "" and Probe.load(old).dim == 2
    (tmp_path / "bad.json").write_text('{"classes": []}')
    with pytest.raises(ProbeError, match="missing coef"):
        Probe.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ProbeError, match="not a probe file"):
        Probe.load(tmp_path / "list.json")
