"""Linear probe on stored embeddings, through the real stack: ingest two looks, train on the index's
vectors, apply to stored images; the same images from files give the same probe."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pipeline_helpers import outcomes, submit, unique_job, wait_done

from taxonstream.classify.probe import Probe
from taxonstream.cli.main import main as taxonstream
from taxonstream.models.synthetic import shapes_image
from taxonstream.v1.messages_pb2 import Outcome

pytest.importorskip("sklearn")
PER_CLASS = 10
TRAIN_PER_CLASS = 6


def _sheet(seed: int, stained: bool) -> Image.Image:
    """Two looks a random-weight encoder tells apart: pale sheets, and sheets under a dark rust wash (the
    stand-in for mercury staining). Shapes vary per image so each class still has spread."""
    base = shapes_image(seed, size=(320, 240))
    wash = Image.new("RGB", base.size, (90, 40, 20) if stained else (245, 245, 235))
    return Image.blend(base, wash, 0.6)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_probe_on_stored_vectors_equals_probe_on_files(fetcher, site, tmp_path, capsys):
    seed = random.SystemRandom().randrange(1, 2**31)
    folder = site.directory / f"probe-{seed}"
    folder.mkdir()
    paths, labels = [], []
    for i in range(2 * PER_CLASS):
        stained = i % 2 == 1
        path = folder / f"sheet-{i:03d}.jpg"
        _sheet(seed + i, stained).save(path, format="JPEG", quality=92)
        paths.append(path)
        labels.append("mercury" if stained else "clean")
    job = unique_job("probe")
    genus = f"Probea{seed}"  # unique to this run, so the filter below finds only this job's images
    metadata = [{"catalogNumber": f"HG{i:04d}", "genus": genus if i < 2 else "Other"} for i in range(len(paths))]
    submit(fetcher, job, [site.url("img", p) for p in paths], metadata)
    assert wait_done(fetcher, job, timeout=300).indexed == len(paths)
    ids = {row: o.image_id for row, o in outcomes(fetcher, job).items() if o.state == Outcome.INDEXED}
    train_rows = [i for i in range(len(paths)) if i // 2 < TRAIN_PER_CLASS]
    held_out = [i for i in range(len(paths)) if i // 2 >= TRAIN_PER_CLASS]

    # Train on stored vectors (image ids), and on the same images as files.
    stored_csv = _write_csv(tmp_path / "stored.csv", ["image_id", "label"], [[ids[i], labels[i]] for i in train_rows])
    files_csv = _write_csv(tmp_path / "files.csv", ["image", "label"], [[str(paths[i]), labels[i]] for i in train_rows])
    assert taxonstream(["probe", "train", str(stored_csv), "--out", str(tmp_path / "stored.json")]) == 0
    assert taxonstream(["probe", "train", str(files_csv), "--out", str(tmp_path / "files.json")]) == 0
    capsys.readouterr()
    stored, files = Probe.load(tmp_path / "stored.json"), Probe.load(tmp_path / "files.json")
    assert (stored.model, stored.model_version, stored.source) == ("clip_standin_image", "1", "index")
    assert (files.source, stored.classes, stored.examples) == ("files", ["clean", "mercury"], len(train_rows))
    # Same crops, same model: the stored vectors are the file path's vectors, so the fits agree.
    np.testing.assert_allclose(stored.coef, files.coef, atol=1e-3)
    np.testing.assert_allclose(stored.intercept, files.intercept, atol=1e-3)

    # Apply to the job's stored images: every image scored, with its metadata; held-out ones mostly right.
    out = tmp_path / "scores.csv"
    assert (
        taxonstream(
            [
                "probe",
                "apply",
                str(tmp_path / "stored.json"),
                "--job",
                job,
                "--out",
                str(out),
                "--columns",
                "catalogNumber",
            ]
        )
        == 0
    )
    with out.open(newline="") as handle:
        scored = {r["image_id"]: r for r in csv.DictReader(handle)}
    assert set(scored) == set(ids.values())
    for row, image_id in ids.items():
        record = scored[image_id]
        assert record["catalogNumber"] == f"HG{row:04d}" and record["job_id"] == job
        assert float(record["p_clean"]) + float(record["p_mercury"]) == pytest.approx(1.0, abs=1e-5)
    # The file probe scores the stored images the same way.
    assert (
        taxonstream(
            ["probe", "apply", str(tmp_path / "files.json"), "--job", job, "--out", str(tmp_path / "files-scores.csv")]
        )
        == 0
    )
    with (tmp_path / "files-scores.csv").open(newline="") as handle:
        from_files = {r["image_id"]: float(r["p_mercury"]) for r in csv.DictReader(handle)}
    assert max(abs(from_files[i] - float(scored[i]["p_mercury"])) for i in scored) < 1e-4
    accuracy = np.mean([scored[ids[i]]["label"] == labels[i] for i in held_out])
    assert accuracy > 0.5, {ids[i]: (labels[i], scored[ids[i]]["label"]) for i in held_out}
    # --filter selects through the index's own filter; an unknown field is the user's error.
    assert taxonstream(["probe", "apply", str(tmp_path / "stored.json"), "--filter", f"genus={genus}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and {line.split(",")[0] for line in lines[1:]} == {ids[0], ids[1]}
    assert taxonstream(["probe", "apply", str(tmp_path / "stored.json"), "--filter", "catalogNumber=HG1"]) == 2
    assert "cannot filter on 'catalogNumber'" in capsys.readouterr().err

    # Clear errors: unknown ids are listed; another model's probe is refused; one class is not a probe.
    bad = _write_csv(tmp_path / "bad.csv", ["image_id", "label"], [[ids[0], "clean"], ["no-such-image", "mercury"]])
    assert taxonstream(["probe", "train", str(bad), "--out", str(tmp_path / "x.json")]) == 2
    assert "1 of the labelled image_ids are not in the index: no-such-image" in capsys.readouterr().err
    one = _write_csv(tmp_path / "one.csv", ["image_id", "label"], [[ids[0], "clean"], [ids[2], "clean"]])
    assert taxonstream(["probe", "train", str(one), "--out", str(tmp_path / "x.json")]) == 2
    assert "at least two classes" in capsys.readouterr().err
    other = json.loads((tmp_path / "stored.json").read_text()) | {"model": "bioclip_image"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert taxonstream(["probe", "apply", str(tmp_path / "other.json"), "--job", job]) == 2
    assert "bioclip_image" in capsys.readouterr().err
