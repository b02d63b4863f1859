"""Numeric metadata filters (`F_small>=0.5`): parsing, and the FAISS index against a brute-force scan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taxonstream.index import filters as flt
from taxonstream.index.comparisons import Numeric, split_expression
from taxonstream.index.faiss_engine import FaissIndex
from taxonstream.index.types import FaissConfig

DIM = 16


def random_metadata(rng: np.random.Generator, n: int) -> list[dict[str, str]]:
    out = []
    for _ in range(n):
        item = {"genus": str(rng.choice(["Apis", "Bombus", "Danaus"])), "F_small": repr(float(rng.random()))}
        roll = rng.random()
        if roll < 0.1:
            del item["F_small"]  # no value: never matches a numeric filter
        elif roll < 0.15:
            item["F_small"] = "n/a"  # not a number: never matches either
        elif roll < 0.2:
            item["F_small"] = str(rng.choice(["0", "0.5", "1"]))  # boundaries of the comparisons below
        item["A_big"] = f" {rng.integers(0, 5) / 4} "  # quarters, with spaces
        out.append(item)
    return out


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


FILTERS = [
    ["F_small>=0.5"],
    ["F_small>0.5"],
    ["F_small<=0.5", "F_small>0.1"],
    ["F_small<0.05"],
    ["A_big=0.25,0.75"],
    ["genus=Bombus", "F_small>=0.9"],
    ["genus=Apis", "A_big>=1"],
    ["F_small>=2"],  # matches nothing
]


def parsed(expr: list[str]) -> flt.Wanted:
    """`A_big=0.25,0.75` means one of them; flt.parse ANDs repeated `=` on a numeric column, so join here."""
    parts: list[tuple[str, object]] = []
    for e in expr:
        name, op, value = split_expression(e)
        if op == "=" and not flt.is_facet(name):
            parts.append((name, Numeric.of("=", value.split(","))))
        else:
            parts.extend(flt.parse([e]).items())
    return flt.combine(parts)  # type: ignore[arg-type]


def brute(metadata: dict[str, dict[str, str]], wanted: flt.Wanted) -> set[str]:
    """Each filter checked by hand on the raw strings, not through the module's matchers."""
    facet, numeric = flt.split(wanted)
    out = set()
    for image_id, item in metadata.items():
        ok = all(item.get(f) in values for f, values in facet.items())
        for column, rule in numeric.items():
            try:
                value = float(item.get(column, "").strip())
            except ValueError:
                ok = False
                continue
            if rule.low_inclusive:
                ok &= value >= rule.low
            else:
                ok &= value > rule.low
            ok &= value <= rule.high if rule.high_inclusive else value < rule.high
            ok &= rule.equals is None or value in rule.equals
        if ok:
            out.add(image_id)
    return out


@pytest.mark.parametrize(
    "config",
    [
        FaissConfig(),  # flat: few matches scored exactly, many with the bitmap
        FaissConfig(kind="hnsw", exact_below=50, ann_min_share=0.0),  # ANN with the selector
        FaissConfig(kind="ivfpq", exact_below=50, ann_min_share=0.0, pq_m=4, nlist=16),
    ],
    ids=["flat", "hnsw", "ivfpq"],
)
def test_numeric_filter_never_returns_a_non_matching_image(config: FaissConfig) -> None:
    rng = np.random.default_rng(1)
    n = 3000
    meta = random_metadata(rng, n)
    ids = [f"img{i}" for i in range(n)]
    index = FaissIndex(config=config)
    index.upsert_many(ids[:2000], unit(rng, 2000), meta[:2000])
    index.search(unit(rng, 1)[0], 5, parsed(["F_small>=0.5"]))  # the column exists from here on…
    index.upsert_many(ids[2000:], unit(rng, 1000), meta[2000:])  # …and must take these writes
    index.upsert_many(ids[:100], unit(rng, 100), random_metadata(rng, 100))  # replaced: new metadata
    index.delete_many(ids[100:150])
    truth = {i: index.get(i) for i in ids if index.get(i) is not None}
    queries = unit(rng, 8)
    for expr in FILTERS:
        wanted = parsed(expr)
        expected = brute(truth, wanted)
        for row in index.search_many(queries, 40, wanted):
            found = {h.image_id for h in row}
            assert found <= expected, (expr, found - expected)
            assert len(found) == min(40, len(expected)), expr
        everything = index.search(queries[0], n, wanted)
        assert {h.image_id for h in everything} == expected, expr
        assert {i for i, _ in index.images(wanted)} == expected, expr
        assert index.stats(wanted).images == len(expected), expr


def test_exact_scores_equal_brute_force_top_k() -> None:
    rng = np.random.default_rng(2)
    meta = random_metadata(rng, 1500)
    vectors = unit(rng, 1500)
    index = FaissIndex()
    index.upsert_many([f"i{n}" for n in range(1500)], vectors, meta)
    query = unit(rng, 1)[0]
    wanted = parsed(["F_small>0.3", "F_small<=0.6"])
    allowed = np.array([f"i{n}" in brute(dict(index.images()), wanted) for n in range(1500)])
    scores = np.where(allowed, vectors @ query, -np.inf)
    best = [f"i{n}" for n in np.argsort(-scores, kind="stable")[:10]]
    assert [h.image_id for h in index.search(query, 10, wanted)] == best


def test_numeric_columns_survive_a_snapshot_and_rebuild() -> None:
    rng = np.random.default_rng(3)
    meta = random_metadata(rng, 600)
    index = FaissIndex(config=FaissConfig(compact_min=10, compact_ratio=0.1))
    index.upsert_many([f"i{n}" for n in range(600)], unit(rng, 600), meta)
    wanted = parsed(["F_small>=0.5"])
    before = {h.image_id for h in index.search(unit(rng, 1)[0], 600, wanted)}
    index.delete_many([f"i{n}" for n in range(0, 600, 3)])  # a compaction renumbers the slots
    after = {h.image_id for h in index.search(unit(rng, 1)[0], 600, wanted)}
    assert after == {i for i in before if int(i[1:]) % 3}
    restored = FaissIndex.load(index.dump())
    assert {h.image_id for h in restored.search(unit(rng, 1)[0], 600, wanted)} == after


def test_stats_by_field_under_a_numeric_filter() -> None:
    rng = np.random.default_rng(4)
    meta = random_metadata(rng, 500)
    index = FaissIndex()
    index.upsert_many([f"i{n}" for n in range(500)], unit(rng, 500), meta)
    wanted = parsed(["F_small<0.25"])
    expected = brute(dict(index.images()), wanted)
    stats = index.stats(wanted)
    genera: dict[str, int] = {}
    for image_id in expected:
        genus = index.get(image_id)["genus"]  # type: ignore[index]
        genera[genus] = genera.get(genus, 0) + 1
    assert stats.images == len(expected) and stats.by_field["genus"] == genera


def test_parse_and_its_errors() -> None:
    wanted = flt.parse(["genus=Apis", "F_small>=0.5", "F_small<0.9", "year=2019"])
    assert wanted["genus"] == frozenset({"Apis"})
    rule = wanted["F_small"]
    assert isinstance(rule, Numeric) and (rule.low, rule.high, rule.high_inclusive) == (0.5, 0.9, False)
    assert wanted["year"] == Numeric(equals=frozenset({2019.0}))
    assert rule.describe("F_small") == ["F_small>=0.5", "F_small<0.9"]
    assert Numeric.of(">", ["1"]).accepts(1.0) is False and Numeric.of(">=", ["1"]).accepts(1.0)
    assert not Numeric().accepts(math.nan)
    for bad, message in [
        ("F_small>=big", "wants a number"),
        ("colour=red", "cannot filter on 'colour'"),
        ("F_small>", "is not FIELD"),
        (">=3", "is not FIELD"),
    ]:
        with pytest.raises(ValueError, match=message):
            flt.parse([bad])
    with pytest.raises(ValueError, match="both by value and by number"):
        flt.combine([("genus", ["Apis"]), ("genus", Numeric.of(">", ["1"]))])
    assert flt.from_request([("F_small", ">=", ["0.5"]), ("genus", "", ["Apis"])]) == flt.parse(
        ["F_small>=0.5", "genus=Apis"]
    )


def test_milvus_numeric_filters_match_brute_force(tmp_path) -> None:
    pytest.importorskip("pymilvus")
    from taxonstream.index.milvus_backend import MilvusIndex
    from taxonstream.index.types import MilvusConfig

    rng = np.random.default_rng(6)
    meta = random_metadata(rng, 400)
    index = MilvusIndex(MilvusConfig(uri=str(tmp_path / "m.db"), index_type="FLAT", index_params={}, exact_below=50))
    try:
        index.upsert_many([f"i{n}" for n in range(400)], unit(rng, 400), meta)
        truth = {f"i{n}": m for n, m in enumerate(meta)}
        for expr in FILTERS:
            wanted = parsed(expr)
            expected = brute(truth, wanted)
            found = {h.image_id for h in index.search(unit(rng, 1)[0], 30, wanted)}
            assert found <= expected and len(found) == min(30, len(expected)), expr
            assert {i for i, _ in index.images(wanted)} == expected, expr
            assert index.stats(wanted).images == len(expected), expr
    finally:
        index.close()


def test_cli_flags_become_request_filters_with_their_comparison() -> None:
    from taxonstream.cli.clients import index_filters
    from taxonstream.fetching.inputs import InputError

    parsed_flags = index_filters(["genus=Apis,Bombus", "F_small>=0.5", "A_big = 0.25,0.75", "W_big<0.1"])
    as_tuples = [(f.field, f.op, list(f.values)) for f in parsed_flags]
    assert as_tuples == [
        ("genus", "", ["Apis", "Bombus"]),
        ("F_small", ">=", ["0.5"]),
        ("A_big", "=", ["0.25", "0.75"]),
        ("W_big", "<", ["0.1"]),
    ]
    wanted = flt.from_request((f.field, f.op, f.values) for f in parsed_flags)
    assert wanted["A_big"] == Numeric(equals=frozenset({0.25, 0.75}))
    for bad in ["F_small>=x", "F_small<1,2"]:
        with pytest.raises(InputError, match="--filter"):
            index_filters([bad])


def test_export_query_carries_numeric_filters() -> None:
    from taxonstream.cli.export_cmd import _query
    from taxonstream.cli.main import parser

    args = parser().parse_args(["export", "--filter", "genus=Apis", "--filter", "F_small>=0.5", "--out", "o"])
    query = _query(args)
    assert query.filters == {"genus": ("Apis",)} and query.comparisons == (("F_small", ">=", "0.5"),)
    assert [(f.field, f.op, list(f.values)) for f in query.proto_filters()] == [
        ("genus", "", ["Apis"]),
        ("F_small", ">=", ["0.5"]),
    ]
    assert query.describe()["comparisons"] == ["F_small>=0.5"]
