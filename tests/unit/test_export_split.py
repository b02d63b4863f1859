"""The export's split: eval classify's stratified draw, independent of listing order, seedable."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from taxonstream.evaluation.classify import stratified_split
from taxonstream.export.split import assign, parse_fractions, stratum


def test_parse_fractions_percent_and_unit():
    assert parse_fractions("70/10/20") == pytest.approx((0.7, 0.1, 0.2))
    assert parse_fractions("0.8/0/0.2") == pytest.approx((0.8, 0.0, 0.2))
    for bad in ["70/10", "70/10/10", "a/b/c", "-10/60/50", "0/0/0"]:
        with pytest.raises(ValueError):
            parse_fractions(bad)


def test_stratum_is_the_species_facet():
    assert stratum({"scientificName": "Danaus plexippus (Linnaeus, 1758)"}) == "Danaus plexippus"
    assert stratum({"genus": "Apis", "specificEpithet": "mellifera"}) == "Apis mellifera"
    assert stratum({"genus": "Apis"}) == ""


def _data(n_species: int = 5, per: int = 20, unlabelled: int = 7):
    ids, labels = [], []
    for s in range(n_species):
        for i in range(per):
            ids.append(f"{s:02d}{i:04d}" + "a" * 10)
            labels.append(f"Genus species{s}")
    ids += [f"zz{i:04d}" for i in range(unlabelled)]
    labels += [""] * unlabelled
    return ids, labels


def test_every_species_keeps_its_shares_and_unlabelled_images_are_split_too():
    ids, labels = _data()
    split = assign(ids, labels, (0.7, 0.1, 0.2), seed=3)
    assert set(split) == {"train", "val", "test"}
    for s in range(5):
        parts = Counter(p for p, label in zip(split, labels, strict=True) if label == f"Genus species{s}")
        assert parts == {"train": 14, "val": 2, "test": 4}
    rest = Counter(p for p, label in zip(split, labels, strict=True) if label == "")
    assert sum(rest.values()) == 7 and rest["train"] >= 1  # 7 → 1.4 test → 1, 0.7 val → 1, 5 train
    assert rest == {"train": 5, "val": 1, "test": 1}


def test_same_as_eval_classify_on_id_order():
    ids, labels = _data(unlabelled=0)
    expected = stratified_split(np.asarray(labels, dtype=object), (0.7, 0.1, 0.2), seed=11)
    assert assign(ids, labels, (0.7, 0.1, 0.2), seed=11) == list(expected)  # ids are already sorted here


def test_listing_order_does_not_change_the_split_but_the_seed_does():
    ids, labels = _data()
    first = dict(zip(ids, assign(ids, labels, (0.7, 0.1, 0.2), seed=0), strict=True))
    shuffled = list(zip(ids, labels, strict=True))
    random.Random(5).shuffle(shuffled)
    again = assign([i for i, _ in shuffled], [label for _, label in shuffled], (0.7, 0.1, 0.2), seed=0)
    assert dict(zip([i for i, _ in shuffled], again, strict=True)) == first
    other = dict(zip(ids, assign(ids, labels, (0.7, 0.1, 0.2), seed=1), strict=True))
    assert other != first and Counter(other.values()) == Counter(first.values())
