"""The chart's land-cover raster: a value that reaches the indexer (only) as TAXONSTREAM_LANDCOVER_RASTER."""

from __future__ import annotations

import pytest
from k8s_support import SERVICES, by_component, env_of, image_requirements, render, render_values


def indexer_env(objects) -> dict:
    deployments = by_component(objects, "Deployment")
    return {name: env_of(deployments[name]["spec"]["template"]["spec"]["containers"][0]) for name in SERVICES}


def test_a_raster_in_object_storage_reaches_the_indexer_only():
    env = indexer_env(render_values({"indexer": {"landcoverRaster": "s3://taxonstream/landcover/cdl_2023.tif"}}))
    assert env["indexer"]["TAXONSTREAM_LANDCOVER_RASTER"]["value"] == "s3://taxonstream/landcover/cdl_2023.tif"
    assert all("TAXONSTREAM_LANDCOVER_RASTER" not in env[name] for name in SERVICES if name != "indexer")


def test_no_raster_by_default():
    assert "TAXONSTREAM_LANDCOVER_RASTER" not in indexer_env(render("default"))["indexer"]


def test_the_value_must_be_an_s3_address():
    with pytest.raises(Exception, match="landcoverRaster|does not match"):
        render_values({"indexer": {"landcoverRaster": "/data/cdl.tif"}})


def test_the_indexer_image_carries_rasterio_and_pyproj():
    names = {image_requirements.requirement_name(r) for r in image_requirements.requirements("indexer")}
    assert {"rasterio", "pyproj"} <= names
