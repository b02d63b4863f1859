"""Re-embedding into a new index version while the serving one keeps answering, through the real stack.

The "new model" is a second stand-in image tower (same family, another seed, so its vectors differ),
written into the Triton repository the stack serves; the indexer loads it when asked to reembed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from pipeline_helpers import outcomes, submit, unique_job, wait_done

from taxonstream.cli.main import main as taxonstream
from taxonstream.core.triton import TritonModel
from taxonstream.models import triton_config
from taxonstream.models.derivatives import parse_box, read_crop
from taxonstream.v1 import embedder_pb2, indexer_pb2
from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack


@pytest.fixture
def new_model(settings) -> Iterator[str]:
    """A stand-in image tower named like an installed model, in the served repository; removed after."""
    import torch

    from taxonstream.models.clip_standin import VisionTowerConfig, build_clip_standin
    from taxonstream.models.contract import CLIP_IMAGE
    from taxonstream.models.onnx_export import export_onnx
    from taxonstream.models.triton_config import Target, render_config

    name = unique_job("clip_rb").replace("-", "") + "_image"
    contract = dataclasses.replace(CLIP_IMAGE, name=name)
    config = VisionTowerConfig(seed=VisionTowerConfig().seed + 1)
    model_dir = stack.model_repository() / name
    export_onnx(
        build_clip_standin(config),
        [torch.zeros(1, 3, config.image_size, config.image_size)],
        model_dir / "1" / "model.onnx",
        [s.name for s in contract.inputs],
        [s.name for s in contract.outputs],
    )
    shutil.copyfile(Path(triton_config.__file__).with_name("triton_python_model.py"), model_dir / "1" / "model.py")
    (model_dir / "config.pbtxt").write_text(render_config(contract, Target.LOCAL))
    try:
        yield name
    finally:
        try:
            TritonModel(settings.triton_url, name).client.unload_model(name)
        finally:
            shutil.rmtree(model_dir, ignore_errors=True)


def listed(indexer, model: str = "", **request) -> dict[str, indexer_pb2.Hit]:
    found = indexer.ListImages(indexer_pb2.ListImagesRequest(model=model, **request), timeout=120)
    return {h.image_id: h for h in found}


def wait_for(condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def self_hit(indexer, image_id: str, model: str = "") -> indexer_pb2.Hit:
    request = indexer_pb2.SearchRequest(image_id=image_id, k=1, model=model)
    return indexer.Search(request, timeout=60).hits[0]


def test_reembed_fills_a_new_version_while_the_old_one_serves(
    fetcher, indexer, embedder, store, site, new_model, capsys
):
    serving = indexer.Stats(indexer_pb2.StatsRequest(), timeout=30)
    old = serving.model
    job = unique_job("reembed")
    submit(fetcher, job, [site.url("img", p) for p in site.images(8)], [{"genus": f"G{i % 2}"} for i in range(8)])
    assert wait_done(fetcher, job, timeout=300).indexed == 8
    job_ids = {o.image_id for o in outcomes(fetcher, job).values() if o.state == Outcome.INDEXED}

    # A model Triton does not have is refused before anything is registered.
    with pytest.raises(grpc.RpcError) as refused:
        indexer.Reembed(indexer_pb2.ReembedRequest(model="no_such_model_image"), timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    before = listed(indexer, with_vectors=True)
    try:
        answer = indexer.Reembed(indexer_pb2.ReembedRequest(model=new_model), timeout=600)
        assert answer.created and answer.images == len(before)
        # Searches keep answering from the serving version while the new one fills.
        some = sorted(job_ids)[0]
        assert self_hit(indexer, some).image_id == some
        # (A long-lived stack may hold images whose crops were removed: those go to the dead-letter topic.)
        wait_for(lambda: job_ids <= set(listed(indexer, new_model)), "the new version never got the job's images")
        assert set(listed(indexer, new_model)) <= set(before)

        after = listed(indexer, new_model, with_vectors=True)
        for image_id in job_ids:
            old_hit, new_hit = before[image_id], after[image_id]
            assert dict(new_hit.metadata) == dict(old_hit.metadata)  # lineage travels with the backfill
            # The crop's own pixels, losslessly: a stored crop, or the box cut from the original where none was.
            metadata = old_hit.metadata
            box = parse_box(metadata["box"])
            png = io.BytesIO()
            read_crop(store.get, metadata["crop_key"], metadata["original_key"], box).save(png, format="PNG")
            crop = png.getvalue()
            direct = embedder.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[crop], model=new_model), timeout=60)
            assert (direct.model, direct.model_version) == (new_model, "1")
            new_vector, old_vector = np.asarray(new_hit.vector), np.asarray(old_hit.vector)
            assert float(new_vector @ np.asarray(direct.vectors[0].values)) >= 0.9999
            assert float(new_vector @ old_vector) < 0.999  # really the other model's vector
            hit = self_hit(indexer, image_id, new_model)
            assert hit.image_id == image_id and hit.score == pytest.approx(1.0, abs=1e-4)

        # Images ingested after the version was added reach it too, and a delete removes them from both.
        later = unique_job("reembed-later")
        submit(fetcher, later, [site.url("img", p) for p in site.images(3)])
        assert wait_done(fetcher, later, timeout=300).indexed == 3
        later_ids = {o.image_id for o in outcomes(fetcher, later).values() if o.state == Outcome.INDEXED}
        wait_for(lambda: later_ids <= set(listed(indexer, new_model)), "a later image never reached the new version")
        assert {h.metadata["job_id"] for i, h in listed(indexer, new_model).items() if i in later_ids} == {later}
        gone = sorted(later_ids)[0]
        indexer.Delete(indexer_pb2.DeleteRequest(image_ids=[gone]), timeout=30)
        wait_for(lambda: gone not in listed(indexer) and gone not in listed(indexer, new_model), "delete missed")

        # The text tower of a model installed without one gives a clear error, not a wrong answer.
        with pytest.raises(grpc.RpcError) as no_text:
            indexer.Search(indexer_pb2.SearchRequest(text="a moth", k=1, model=new_model), timeout=60)
        assert "text" in no_text.value.details()

        # Serving switches searches that name no model; the old version is still kept.
        assert taxonstream(["index", "serve", new_model]) == 0
        assert indexer.Stats(indexer_pb2.StatsRequest(), timeout=30).model == new_model
        assert self_hit(indexer, some).score == pytest.approx(1.0, abs=1e-4)
        assert taxonstream(["index", "versions"]) == 0
        printed = capsys.readouterr().out
        assert f"* {new_model}/1" in printed and f"  {old}/" in printed
        assert taxonstream(["search", "--id", some, "--model", old, "-k", "1"]) == 0
        assert f"model {old}/" in capsys.readouterr().out
    finally:
        indexer.Serve(indexer_pb2.ServeRequest(model=old, model_version=serving.model_version), timeout=30)
        with contextlib.suppress(grpc.RpcError):  # not registered when Reembed itself failed
            indexer.Retire(indexer_pb2.ServeRequest(model=new_model), timeout=30)
    versions = indexer.Stats(indexer_pb2.StatsRequest(), timeout=30).versions
    assert [v.model for v in versions] == [old]
    with pytest.raises(grpc.RpcError) as unknown:
        indexer.Search(indexer_pb2.SearchRequest(image_id=some, k=1, model=new_model), timeout=60)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
