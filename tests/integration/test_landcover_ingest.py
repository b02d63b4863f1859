"""Land cover through the whole pipeline: records with coordinates are indexed with LatLonCover's shares
(from the suite's synthetic CDL, tests/integration/landcover_raster.py) and found by numeric filters."""

from __future__ import annotations

from pathlib import Path

import landcover_raster
import pytest
from pipeline_helpers import outcomes, submit, unique_job, wait_done

from taxonstream.cli.main import main as taxonstream
from taxonstream.v1 import indexer_pb2
from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack


def indexer_raster() -> str | None:
    """The raster the running indexer was started with (its environment), if any."""
    pid = stack.service_pid("indexer")
    if pid is None:
        return None
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [v for v in environ if v.startswith(b"TAXONSTREAM_LANDCOVER_RASTER=")]
    return found[0].split(b"=", 1)[1].decode() if found else None


def numeric(field: str, op: str, value: str) -> indexer_pb2.Filter:
    return indexer_pb2.Filter(field=field, op=op, values=[value])


def test_an_ingested_record_with_coordinates_is_found_by_a_land_cover_filter(fetcher, indexer, site, capsys):
    if not indexer_raster():
        pytest.skip("the running indexer has no TAXONSTREAM_LANDCOVER_RASTER: `stack down` and let the suite start it")
    tag = unique_job("lc").replace("-", "")
    genus = f"Quercus{tag}"
    forest, water = (
        landcover_raster.point(*landcover_raster.FOREST_CELL),
        landcover_raster.point(*landcover_raster.WATER_CELL),
    )
    metadata = [
        {"genus": genus, "decimalLatitude": forest[0], "decimalLongitude": forest[1]},
        {"genus": genus, "decimalLatitude": water[0], "decimalLongitude": water[1]},
        {"genus": genus},  # no coordinates: no shares
        {"genus": genus, "decimalLatitude": "95", "decimalLongitude": "1"},  # invalid: a reason, still indexed
    ]
    job = unique_job("landcover")
    images = site.images(len(metadata))
    submit(fetcher, job, [site.url("img", p) for p in images], metadata)
    assert wait_done(fetcher, job, timeout=300).indexed == len(metadata)
    ids = {row: o.image_id for row, o in outcomes(fetcher, job).items() if o.state == Outcome.INDEXED}

    same_genus = indexer_pb2.Filter(field="genus", values=[genus])
    request = indexer_pb2.SearchRequest(image_id=ids[1], k=50, filters=[same_genus, numeric("F_small", ">=", "0.5")])
    hits = list(indexer.Search(request, timeout=60).hits)
    assert [h.image_id for h in hits] == [ids[0]]
    assert float(hits[0].metadata["F_small"]) == 1.0 and float(hits[0].metadata["F_big"]) == 1.0
    water_hits = indexer.Search(
        indexer_pb2.SearchRequest(image_id=ids[0], k=50, filters=[same_genus, numeric("W_big", ">", "0.9")]),
        timeout=60,
    ).hits
    assert [h.image_id for h in water_hits] == [ids[1]]
    everything = indexer.Search(indexer_pb2.SearchRequest(image_id=ids[0], k=50, filters=[same_genus]), timeout=60)
    by_id = {h.image_id: h.metadata for h in everything.hits}
    assert "F_small" not in by_id[ids[2]] and by_id[ids[3]]["landcover_reason"] == "invalid_coordinates"

    stats = indexer.Stats(indexer_pb2.StatsRequest(filters=[same_genus, numeric("F_small", "<", "0.5")]), timeout=30)
    assert stats.images == 1 and stats.by_field["genus"].counts[genus] == 1

    # The same through the command line.
    argv = ["search", "--id", ids[1], "--filter", f"genus={genus}", "--filter", "F_small>=0.5", "-k", "50"]
    assert taxonstream(argv) == 0
    assert capsys.readouterr().out.startswith("1 hits")
    assert taxonstream(["stats", "--filter", f"genus={genus}", "--filter", "W_small=1"]) == 0
    assert capsys.readouterr().out.startswith("1 images indexed matching")
